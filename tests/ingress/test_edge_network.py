"""The listener's edge: raw bytes from hostile or broken peers, over loopback.

pynetdicom's SCU cannot send an oversized or unknown PDU, nor stall inside one,
so these tests open plain sockets to a real node and write the bytes a broken
sender would; real associations (DCMTK, pynetdicom) then show who still gets in.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.helpers import (
    NODE_AET,
    SCANNER_AET,
    echo,
    node_config,
    spool_files,
    store_statuses,
    storescu,
    wait_for,
)

pytestmark = [
    pytest.mark.peers,
    # an exception that ends one of pynetdicom's threads fails the test, not just a warning
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

#: An A-ASSOCIATE-RQ header announcing a 4 GiB body.
HUGE_RQ_HEADER = b"\x01\x00\xff\xff\xff\xff"
#: A-ABORT from the service provider (source 2): invalid PDU parameter value (6)
#: and unrecognized PDU (1), PS3.8 9.3.8.
ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
ABORT_UNRECOGNIZED_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01"


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def connect(stack: ExitStack, port: int) -> socket.socket:
    return stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the node sends until it closes; and how long that took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        except TimeoutError as exc:
            raise AssertionError(f"the node kept the connection open for {timeout} s") from exc
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - start


def scu_associate(port: int, bind: str | None = None) -> object:
    ae = AE(ae_title=SCANNER_AET)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    kwargs = {"bind_address": (bind, 0)} if bind else {}
    return ae.associate("127.0.0.1", port, ae_title=NODE_AET, **kwargs)


def test_oversized_associate_rq_is_refused_at_the_header(make_settings, start_node, sockets):
    """Six connections announcing 4 GiB A-ASSOCIATE-RQs against a node that
    accepts four associations: each gets an A-ABORT and is closed at once, long
    before the association deadline, and a real association then gets in while
    the peers still hold their ends open."""
    settings = make_settings(
        ingress={"max_associations": 4, "association_deadline": 60, "acse_timeout": 60}
    )
    node = start_node(settings)
    bad = [connect(sockets, settings.node.port) for _ in range(6)]
    for sock in bad:
        sock.sendall(HUGE_RQ_HEADER)
    for sock in bad:
        received, took = read_until_closed(sock, timeout=5)
        assert received == ABORT_INVALID_PARAMETER
        assert took < 5
    assert node.ingress is not None
    wait_for(lambda: node.ingress.active_associations() == 0, 5, "the slots to be freed")
    assert echo(settings.node.port)


def test_unknown_pdu_type_is_aborted(make_settings, start_node, sockets):
    settings = make_settings(ingress={"association_deadline": 60, "acse_timeout": 60})
    start_node(settings)
    sock = connect(sockets, settings.node.port)
    sock.sendall(b"\x55\x00\xff\xff\xff\xff")
    received, _ = read_until_closed(sock, timeout=5)
    assert received == ABORT_UNRECOGNIZED_PDU
    assert echo(settings.node.port)


@pytest.mark.parametrize(
    "sent",
    [b"", b"\x01\x00", b"\x01\x00\x00\x00\x00\x44\x00\x01"],
    ids=["silent", "half-a-header", "trickled-rq"],
)
def test_connection_without_association_is_closed_at_the_deadline(
    make_settings, start_node, sockets, sent
):
    settings = make_settings(ingress={"association_deadline": 1, "acse_timeout": 60})
    node = start_node(settings)
    began = time.monotonic()
    sock = connect(sockets, settings.node.port)
    sock.sendall(sent)
    received, _ = read_until_closed(sock, timeout=10)
    assert received == b""
    assert 1 <= time.monotonic() - began < 5  # the deadline runs from the connection
    assert node.ingress is not None
    wait_for(lambda: node.ingress.active_associations() == 0, 5, "the slot to be freed")


def test_one_address_cannot_take_every_slot(make_settings, start_node, sockets):
    """A burst of six silent connections from 127.0.0.1, whose share is two:
    four are closed as soon as they are accepted, while another address still
    associates; once 127.0.0.1 lets go, it is served again."""
    settings = make_settings(
        ingress={
            "max_connections_per_address": 2,
            "association_deadline": 60,
            "acse_timeout": 60,
        }
    )
    node = start_node(settings)
    assert node.ingress is not None
    burst = [connect(sockets, settings.node.port) for _ in range(6)]
    closed: set[socket.socket] = set()

    def four_closed() -> bool:
        readable, _, _ = select.select([s for s in burst if s not in closed], [], [], 0)
        for sock in readable:
            try:
                if sock.recv(1) == b"":
                    closed.add(sock)
            except ConnectionResetError:
                closed.add(sock)
        return len(closed) >= 4

    wait_for(four_closed, 5, "four of the six connections to be closed")
    # the two admitted connections count as associations once their threads start
    ingress = node.ingress
    wait_for(lambda: ingress.active_associations() == 2, 5, "the two admitted associations")
    assoc = scu_associate(settings.node.port, bind="127.0.0.2")
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert len(closed) == 4  # the two held connections are still open
    for sock in burst:
        sock.close()
    wait_for(lambda: echo(settings.node.port), 10, "127.0.0.1 to be served again")


def test_open_associations_poll_as_often_together_as_one_alone(make_settings, start_node):
    """Each open association's network loop sleeps ``poll_interval_ms`` times
    the number open (so many senders do not spend the CPU waking up); as they
    close, the ones left poll faster again."""
    settings = make_settings(ingress={"poll_interval_ms": 0.5})
    node = start_node(settings)
    ingress = node.ingress
    assert ingress is not None

    def delays() -> set[float]:  # in microseconds
        return {
            round(assoc.dul._run_loop_delay * 1e6)
            for server in ingress._servers
            for assoc in server.active_associations
        }

    scus = [scu_associate(settings.node.port) for _ in range(3)]
    try:
        assert all(a.is_established for a in scus)  # type: ignore[attr-defined]
        wait_for(lambda: ingress.active_associations() == 3, 5, "three associations")
        assert delays() == {1500}
    finally:
        for assoc in scus[1:]:
            assoc.release()  # type: ignore[attr-defined]
    wait_for(lambda: delays() == {500}, 5, "the one left to poll faster")
    scus[0].release()  # type: ignore[attr-defined]


def test_pdata_above_the_advertised_maximum_aborts(make_settings, start_node):
    """After a normal association, a P-DATA-TF PDU announcing 8 MiB (the node
    advertises 262,144) gets an A-ABORT before its body is read."""
    settings = make_settings(ingress={"max_pdu_size": 262144})
    start_node(settings)
    assoc = scu_associate(settings.node.port)
    assert assoc.is_established  # type: ignore[attr-defined]
    raw = assoc.dul.socket.socket  # type: ignore[attr-defined]
    raw.sendall(b"\x04\x00" + struct.pack(">L", 8 * 1024 * 1024) + b"\x00" * 1024)
    wait_for(lambda: assoc.is_aborted, 5, "the node to abort the association")  # type: ignore[attr-defined]


def test_listen_backlog_is_sized_for_bursts(make_settings, start_node):
    settings = make_settings(ingress={"listen_backlog": 200})
    start_node(settings)
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{settings.node.port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # State Recv-Q Send-Q ...: for a listening socket Send-Q is the backlog
    assert int(out[2]) == 200, out


def test_dataset_above_the_bound_is_refused_and_not_kept(make_settings, start_node, ct_series):
    settings = make_settings(ingress={"max_dataset_size": 100_000})
    start_node(settings)
    big = ct_series(slices=1, size=512, name="big")  # about 512 KiB
    small = ct_series(slices=1, size=16, name="small")
    result = storescu(big.paths + small.paths, settings.node.port, extra=["--no-halt"])
    assert store_statuses(result.stderr) == ["Refused: OutOfResources", "Success"], result.stderr
    spool = settings.storage.spool_path
    assert [p.name for p in spool_files(spool)] == [small.sop_uids[0] + ".dcm"]
    assert list((spool / "tmp").iterdir()) == []


def test_a_transfer_cut_short_leaves_no_file(node_process, tmp_path, monkeypatch):
    """A C-STORE whose data set stops half-way (the sender aborts) leaves
    nothing in the node's temporary directory or its spool."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.sop_class import CTImageStorage

    received = tmp_path / "received"
    received.mkdir()
    monkeypatch.setenv("TMPDIR", str(received))
    config = node_config(tmp_path)
    node = node_process(config)
    ae = AE(ae_title=SCANNER_AET)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET, max_pdu=16384)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3.4"
    request.Priority = 2
    request.DataSet = BytesIO(b"\x08\x00\x16\x00\x1a\x00\x00\x00" + b"1" * 200_000)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    pdus = list(message.encode_msg(context_id, 16384))
    raw = assoc.dul.socket.socket
    for primitive in pdus[:4]:  # the command and the first part of the data set
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        raw.sendall(pdu.encode())
    wait_for(lambda: list(received.glob("*.dcm")), 10, "the node to start writing the data set")
    assoc.abort()
    wait_for(lambda: not list(received.iterdir()), 10, "the partial file to be removed")
    assert spool_files(tmp_path / "data" / "spool") == []
