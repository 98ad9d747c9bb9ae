"""A real node on loopback, fed fuzzed C-STORE requests over a plain socket.

Each case is one association: a C-STORE-RQ command set (elements left out,
values replaced by other types and sizes, other command fields and data set
types, or its bytes broken) and a small CT dataset (whole, or broken as in
:mod:`tests.fuzz.mutations`), sent in PDVs of a random size. Every request is
answered with a DIMSE status or the association is aborted or closed, within
a bound; the node then still answers a C-ECHO, its spool holds no partial
write, and every instance it stored was answered Success and reads whole.
Afterwards DCMTK's echoscu and storescu still succeed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.config import Settings, parse_config
from dicomnode.ingress.integrity import check_complete_file
from dicomnode.service import Node
from dicomnode.synthetic import write_ct_series
from tests.fuzz import note, rounds
from tests.fuzz.mutations import mutation
from tests.helpers import (
    NODE_AET,
    SCANNER_AET,
    echo,
    node_config,
    store_statuses,
    storescu,
    wait_for,
)
from tests.ingress.rawscu import RawAssociation, command_set, implicit_le

pytestmark = [
    pytest.mark.peers,
    # the in-process node's pydicom warns about every odd value it is fed
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

VERIFICATION = b"1.2.840.10008.1.1"
#: Far longer than the node takes to answer; shorter than its own timeouts, so
#: a request left unanswered fails here instead of waiting for them.
ANSWER_BOUND = 20.0
#: What a status from pynetdicom itself, not from the node's handler, means:
#: the handler raised (0xC211) or returned no valid status (0xC212, 0xC213).
HANDLER_FAULTS = {0xC211, 0xC212, 0xC213}


@dataclass
class LiveNode:
    settings: Settings
    template: pydicom.Dataset
    succeeded: set[str]

    @property
    def port(self) -> int:
        return self.settings.node.port

    @property
    def spool(self) -> Path:
        return self.settings.storage.spool_path


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    tmp = tmp_path_factory.mktemp("wire-fuzz")
    settings = parse_config(node_config(tmp))
    node = Node(settings)
    node.start()
    (path,) = write_ct_series(tmp / "ct", slices=1, rows=8, columns=8).paths
    try:
        yield LiveNode(settings, pydicom.dcmread(path), set())
    finally:
        node.stop()


# -- the cases ------------------------------------------------------------

UID_VALUES = st.sampled_from(
    [b"", b"1.2.3\n" + b"2026-01-01 FORGED", b"1." * 40, b"\x00" * 8, b"1.2.840.10008.1.1", b"x"]
) | st.binary(max_size=80)
SHORTS = st.sampled_from([0, 1, 0x0101, 0x0102, 0x8001, 0xFFFF]) | st.integers(0, 0xFFFF)
SHORT_VALUES = SHORTS.map(lambda v: struct.pack("<H", v)) | st.binary(max_size=6)


@st.composite
def commands(draw: st.DrawFn, sop_class: bytes, sop: bytes) -> tuple[bytes, bool, list[str]]:
    """A C-STORE-RQ command set, maybe broken; whether a dataset follows it
    (by its Command Data Set Type); what was done to it."""
    fields: dict[int, bytes] = {
        0x0002: sop_class,
        0x0100: struct.pack("<H", 0x0001),
        0x0110: struct.pack("<H", draw(st.integers(0, 0xFFFF))),
        0x0700: struct.pack("<H", 0),
        0x0800: struct.pack("<H", 0x0000),
        0x1000: sop,
    }
    done: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        element = draw(st.sampled_from([*sorted(fields), 0x1030, 0x1031, 0x0600, 0x0000]))
        how = draw(st.sampled_from(["leave out", "replace", "replace"]))
        if how == "leave out":
            fields.pop(element, None)
        elif element in (0x0002, 0x1000, 0x1030, 0x0600):
            fields[element] = draw(UID_VALUES)
        else:
            fields[element] = draw(
                st.one_of(SHORTS.map(lambda v: struct.pack("<H", v)), st.binary(max_size=6))
            )
        done.append(f"{how} (0000,{element:04X})")
    encoded = command_set(sorted((e, v) for e, v in fields.items() if e != 0x0000))
    if draw(st.integers(0, 5)) == 0:
        broken = bytearray(encoded)
        done.append(f"command {draw(mutation(broken))}")
        encoded = bytes(broken)
    data_set_type = fields.get(0x0800, b"")
    with_dataset = data_set_type != struct.pack("<H", 0x0101) or draw(st.booleans())
    return encoded, with_dataset, done


@dataclass
class Case:
    command: bytes
    dataset: bytes
    send_dataset: bool
    fragment: int
    sop: str
    done: list[str]


@st.composite
def cases(draw: st.DrawFn, template: pydicom.Dataset) -> Case:
    sop = f"2.25.{draw(st.integers(1, 2**100))}"
    ds = template.copy()
    ds.SOPInstanceUID = sop
    data = bytearray(implicit_le(ds))
    done: list[str] = []
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            done.append(f"dataset {draw(mutation(data))}")
    command, send_dataset, changed = draw(commands(str(ds.SOPClassUID).encode(), sop.encode()))
    fragment = draw(st.sampled_from([16, 100, 1000, 16000]) | st.integers(16, 16000))
    return Case(command, bytes(data), send_dataset, fragment, sop, changed + done)


# -- one case on the wire ---------------------------------------------------


def _answer(assoc: RawAssociation) -> str:
    """The node's answer to a request: its status, or how the association ended."""
    try:
        return f"{assoc.response_status():#06x}"
    except TimeoutError:
        return "nothing"
    except ConnectionError:
        return "closed"
    except AssertionError as exc:
        return "aborted" if "type 0x7" in str(exc) else f"unexpected: {exc}"


def _echo_status(port: int) -> int:
    assoc = RawAssociation(port, SCANNER_AET, NODE_AET, VERIFICATION)
    assoc.sock.settimeout(ANSWER_BOUND)
    try:
        assoc.send_pdv(
            command_set(
                [
                    (0x0002, VERIFICATION),
                    (0x0100, struct.pack("<H", 0x0030)),
                    (0x0110, struct.pack("<H", 1)),
                    (0x0800, struct.pack("<H", 0x0101)),
                ]
            ),
            command=True,
            last=True,
        )
        status = assoc.response_status()
        assoc.release()
        return status
    finally:
        assoc.close()


def _stored(node: LiveNode) -> dict[str, Path]:
    return {path.stem: path for path in (node.spool / "studies").rglob("*.dcm")}


def send_one(node: LiveNode, case: Case) -> None:
    """The property, on one case."""
    assoc = RawAssociation(
        node.port, SCANNER_AET, NODE_AET, str(node.template.SOPClassUID).encode()
    )
    assoc.sock.settimeout(ANSWER_BOUND)
    try:
        try:
            assoc.send_pdv(case.command, command=True, last=True)
            if case.send_dataset:
                assoc.send_dataset(case.dataset, fragment=case.fragment)
        except OSError:
            # the node aborted while the rest was still on its way
            answer = "aborted while sending"
        else:
            answer = _answer(assoc)
        if answer.startswith("0x"):
            with_status = "Success" if answer == "0x0000" else answer
            try:
                assoc.release()
            except (OSError, AssertionError):
                pass
        else:
            with_status = answer
    finally:
        assoc.close()
    note("wire", f"answered: {with_status}")
    for what in case.done:
        note("wire", f"sent: {what.split(' (')[0]}")
    assert answer != "nothing", f"no answer within {ANSWER_BOUND} s: {case}"
    assert answer != "closed", f"connection dropped without an A-ABORT: {case}"
    assert not answer.startswith("unexpected"), answer
    if answer.startswith("0x"):
        assert int(answer, 16) not in HANDLER_FAULTS, f"the handler failed: {answer}, {case}"
    if answer == "0x0000":
        node.succeeded.add(case.sop)
    # the node is up, left nothing half-written, and kept only what it acknowledged
    assert _echo_status(node.port) == 0x0000
    # a partial write is removed when its association ends, which may be a
    # moment after the A-ABORT reached us
    wait_for(lambda: not any((node.spool / "tmp").iterdir()), 10, "the spool's tmp/ to empty")
    stored = _stored(node)
    assert set(stored) <= node.succeeded, sorted(set(stored) - node.succeeded)
    if answer == "0x0000":
        assert case.sop in stored
        _reads_whole(stored[case.sop])


def _reads_whole(path: Path) -> None:
    """A stored file opens in pydicom, and its data set is whole."""
    ds = pydicom.dcmread(path)
    check_complete_file(path, str(ds.file_meta.TransferSyntaxUID))


def test_every_fuzzed_c_store_is_answered_or_aborted_and_the_node_stays_up(
    live_node: LiveNode,
) -> None:
    @settings(max_examples=40)
    @given(cases(live_node.template))
    def _property(case: Case) -> None:
        send_one(live_node, case)

    rounds("wire", _property)
    # whatever it stored reads whole, and real peers still get through
    for path in _stored(live_node).values():
        _reads_whole(path)
    assert echo(live_node.port)
    good = live_node.spool.parent / "good.dcm"
    ds = live_node.template.copy()
    ds.SOPInstanceUID = "2.25.1"
    ds.save_as(good, enforce_file_format=True)
    result = storescu([good], live_node.port)
    assert store_statuses(result.stdout + result.stderr) == ["Success"], result.stderr
