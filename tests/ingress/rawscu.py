"""A storage SCU that writes the PDUs byte by byte (PS3.8 section 9.3).

pynetdicom's SCU refuses to send what a broken or hostile sender sends (a
newline in a UID, a dataset that ends early); this one sends exactly the bytes
it is given, so the node's answer to them can be tested.
"""

from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LE = b"1.2.840.10008.1.2"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7433.1.1"


def _even(value: bytes, pad: bytes = b"\x00") -> bytes:
    return value + pad if len(value) % 2 else value


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, element, len(value)) + value


def command_set(fields: list[tuple[int, bytes]]) -> bytes:
    """An Implicit VR Little Endian command set with its group length first.

    ``fields`` are ``(element, encoded value)`` of group 0000, in order; UI
    values are padded with NUL and others must already be of even length.
    """
    body = b"".join(_element(0x0000, element, _even(value)) for element, value in fields)
    return _element(0x0000, 0x0000, struct.pack("<L", len(body))) + body


def store_request(sop_class: bytes, sop_instance: bytes, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command with a dataset following."""
    return command_set(
        [
            (0x0002, sop_class),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, sop_instance),
        ]
    )


def implicit_le(ds: Dataset) -> bytes:
    """``ds`` encoded in Implicit VR Little Endian, as a sender puts it in P-DATA."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, ds)
    return buffer.getvalue()


@dataclass
class Rejection:
    """An A-ASSOCIATE-RJ: result, source, reason."""

    result: int
    source: int
    reason: int


class RawAssociation:
    """One association over a plain socket, proposing one presentation context
    (id 1) in Implicit VR Little Endian.

    Parameters
    ----------
    port : int
        The node's port on 127.0.0.1.
    calling, called : str
        AE titles.
    abstract_syntax : bytes
        The SOP class proposed.
    """

    def __init__(self, port: int, calling: str, called: str, abstract_syntax: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = _item(
            0x20,
            struct.pack(">BBBB", 1, 0, 0, 0)
            + _item(0x30, abstract_syntax)
            + _item(0x40, IMPLICIT_VR_LE),
        )
        user = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, IMPLEMENTATION_UID))
        body = (
            struct.pack(">HH", 1, 0)
            + called.encode().ljust(16)
            + calling.encode().ljust(16)
            + b"\x00" * 32
            + _item(0x10, APPLICATION_CONTEXT)
            + context
            + user
        )
        self.sock.sendall(_pdu(0x01, body))
        kind, payload = self.read_pdu()
        self.rejection: Rejection | None = None
        if kind == 0x03:
            self.rejection = Rejection(payload[1], payload[2], payload[3])
        elif kind != 0x02:
            raise AssertionError(f"expected A-ASSOCIATE-AC or -RJ, got PDU type {kind:#x}")

    def _read(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = self.sock.recv(count)
            if not chunk:
                raise ConnectionError("the node closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU: its type and body."""
        kind, _, length = struct.unpack(">BBL", self._read(6))
        return kind, self._read(length)

    def send_pdv(self, data: bytes, *, command: bool, last: bool) -> None:
        """One P-DATA-TF with one PDV of context 1."""
        header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        pdv = struct.pack(">LBB", len(data) + 2, 1, header) + data
        self.sock.sendall(_pdu(0x04, pdv))

    def send_dataset(self, data: bytes, fragment: int = 16000) -> None:
        """The dataset in PDVs of at most ``fragment`` bytes, the last flagged last."""
        chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [b""]
        for index, chunk in enumerate(chunks):
            self.send_pdv(chunk, command=False, last=index == len(chunks) - 1)

    def store(self, command: bytes, dataset: bytes) -> int:
        """Send a C-STORE-RQ and its dataset; return the response's Status."""
        self.send_pdv(command, command=True, last=True)
        self.send_dataset(dataset)
        return self.response_status()

    def response_status(self) -> int:
        """Read P-DATA-TF PDUs until a whole command arrives; return its Status."""
        received = b""
        while True:
            kind, body = self.read_pdu()
            if kind != 0x04:
                raise AssertionError(f"expected P-DATA-TF, got PDU type {kind:#x}")
            offset = 0
            while offset < len(body):
                (length,) = struct.unpack_from(">L", body, offset)
                header = body[offset + 5]
                received += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if header & 0x01 and header & 0x02:
                    rsp = read_dataset(io.BytesIO(received), True, True)
                    return int(rsp.Status)

    def release(self) -> None:
        """A-RELEASE-RQ, wait for -RP, close."""
        self.sock.sendall(_pdu(0x05, b"\x00" * 4))
        kind, _ = self.read_pdu()
        assert kind == 0x06, f"expected A-RELEASE-RP, got PDU type {kind:#x}"
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
