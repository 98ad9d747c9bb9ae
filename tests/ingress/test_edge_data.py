"""What a broken or hostile sender gets, tried on a real node over loopback.

Where pynetdicom's SCU cannot produce the fault (a dataset that ends early, a
newline in a UID) the PDUs are written by hand (:mod:`tests.ingress.rawscu`).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import pydicom
import pytest
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.config import parse_config
from tests.conftest import open_store
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
from tests.ingress.rawscu import (
    RawAssociation,
    Rejection,
    command_set,
    implicit_le,
    store_request,
)

pytestmark = pytest.mark.peers

CT = str(CTImageStorage).encode()
#: What every line the node logs starts with (service.LOG_FORMAT).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def ct_dataset(ct_series, size: int = 256) -> pydicom.Dataset:
    (path,) = ct_series(slices=1, size=size).paths
    return pydicom.dcmread(path)


def test_a_dataset_that_ends_early_is_refused_and_nothing_kept(
    make_settings, start_node, ct_series
):
    """A 256x256 16-bit CT whose Pixel Data declares 131,072 bytes while the
    stream ends 1,000 bytes early, the last fragment flagged last."""
    settings = make_settings()
    start_node(settings)
    ds = ct_dataset(ct_series)
    assert len(ds.PixelData) == 131072
    whole = implicit_le(ds)
    sop = ds.SOPInstanceUID.encode()
    assoc = RawAssociation(settings.node.port, SCANNER_AET, NODE_AET, CT)
    try:
        status = assoc.store(store_request(CT, sop), whole[:-1000])
        assert 0xC000 <= status <= 0xCFFF, hex(status)
        assert spool_files(settings.storage.spool_path) == []
        assert open_store(settings).jobs() == []
        # the same instance, whole, on the same association: stored
        assert assoc.store(store_request(CT, sop, message_id=2), whole) == 0x0000
    finally:
        assoc.release()
    assert [p.stem for p in spool_files(settings.storage.spool_path)] == [ds.SOPInstanceUID]


#: Looks like a line the node writes; 59 characters with the UID before it.
FORGED = "2026-01-01 00:00:00,000 ERROR   MainProcess x: FORGED"


@pytest.mark.parametrize(
    "uid",
    [
        # short enough for pynetdicom: the node's handler refuses the instance
        "1.2.3\n" + FORGED,
        # too long for pynetdicom: it aborts the association
        "1.2.3.4.5.6.7.8.9.10.11.12\n" + FORGED,
    ],
    ids=["refused-by-the-node", "aborted-by-pynetdicom"],
)
def test_a_newline_in_a_uid_cannot_forge_a_log_line(node_process, tmp_path, ct_series, uid):
    """A newline in the command's Affected SOP Instance UID reaches no log line
    raw, and the refused instance is one log line, not ten."""
    node = node_process(node_config(tmp_path))
    ds = ct_dataset(ct_series, size=16)
    before = len(node.log().splitlines())
    assoc = RawAssociation(node.port, SCANNER_AET, NODE_AET, CT)
    try:
        status = assoc.store(store_request(CT, uid.encode()), implicit_le(ds))
    except (AssertionError, ConnectionError):
        status = None  # aborted
    else:
        assoc.release()
    finally:
        assoc.close()
    assert status != 0x0000
    wait_for(lambda: "FORGED" in node.log(), 10, "the refusal in the log")
    assert echo(node.port)  # the node still answers, and what it logged is out
    lines = node.log().splitlines()[before:]
    assert not any(line.startswith(FORGED[:23]) for line in lines), "\n".join(lines)
    assert all(LOG_LINE.match(line) for line in lines), "\n".join(lines)
    loud = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(loud) == 1, "\n".join(lines)
    assert "\\n" + FORGED in loud[0]


def test_an_association_to_a_called_ae_the_node_does_not_serve_is_rejected(
    make_settings, start_node, ct_series
):
    """A-ASSOCIATE-RJ 1/1/7 (rejected-permanent, service user, called AE title
    not recognized) for an allowed sender calling the wrong AE title."""
    settings = make_settings()
    start_node(settings)
    raw = RawAssociation(settings.node.port, SCANNER_AET, "WRONGAET", CT)
    raw.close()
    assert raw.rejection == Rejection(result=1, source=1, reason=7)
    result = storescu(ct_series(slices=1, size=16).paths, settings.node.port, called="WRONGAET")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    assert spool_files(settings.storage.spool_path) == []
    assert echo(settings.node.port, called=NODE_AET)


def test_the_node_answers_to_every_configured_called_ae_title(make_settings, start_node):
    settings = make_settings(ingress={"called_ae_titles": ["AI_CT", "AI_MR"]})
    start_node(settings)
    assert echo(settings.node.port, called="AI_CT")
    assert echo(settings.node.port, called="AI_MR")
    assert not echo(settings.node.port, called=NODE_AET)


def test_a_re_sent_uid_with_other_content_gets_a_warning_and_is_counted(
    node_process, tmp_path, ct_series
):
    """First copy wins, as before; the same instance again (even in another
    transfer syntax) is Success, other content under its UID a Warning, a log
    line and a CONFLICT count in `dicomnode studies`."""
    config = node_config(tmp_path)
    node = node_process(config)
    series = ct_series(slices=2, size=16)
    first = series.paths[0]
    changed = pydicom.dcmread(first)
    changed.SeriesDescription = "re-processed"
    changed.save_as(tmp_path / "changed.dcm")

    assert store_statuses(storescu(series.paths, node.port).stderr) == ["Success"] * 2
    (kept,) = [p for p in spool_files(tmp_path / "data" / "spool") if p.stem == series.sop_uids[0]]
    kept_bytes = kept.read_bytes()
    again = storescu([first], node.port, extra=["--propose-implicit"])
    assert store_statuses(again.stderr) == ["Success"], again.stderr
    other = storescu([tmp_path / "changed.dcm"], node.port)
    (status,) = store_statuses(other.stderr)
    assert status.startswith("Warning"), other.stderr
    assert "0xb006" in other.stderr.lower() or "ElementsDiscarded" in other.stderr

    assert kept.read_bytes() == kept_bytes
    store = open_store(parse_config(config))
    assert store.duplicates(series.sop_uids[0]) == 2
    assert store.conflicts(series.sop_uids[0]) == 1
    (line,) = [line for line in node.log().splitlines() if "different content" in line]
    assert " WARNING " in line and series.sop_uids[0] in line and "SCANNER" in line
    studies = subprocess.run(
        [sys.executable, "-m", "dicomnode", "studies", "--full", "-c", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    header, *rows = studies.stdout.splitlines()
    (row,) = [r for r in rows if series.study_uid in r]
    columns = dict(zip(header.replace("STUDY UID", "UID").split(), row.split(), strict=False))
    assert (columns["DUP"], columns["CONFLICT"]) == ("2", "1")


def test_starting_below_the_disk_floor_says_so(node_process, tmp_path):
    """The node starts (it can still answer C-ECHO) and says at once, as an
    ERROR naming the free space and the floor, that it refuses every C-STORE;
    a C-ECHO while below the floor leaves a WARNING for whoever tests."""
    floor = 1 << 40  # MiB: no disk has that much
    node = node_process(node_config(tmp_path, storage={"min_free_mb": floor}))
    (line,) = [line for line in node.log().splitlines() if "below storage.min_free_mb" in line]
    assert " ERROR " in line and f"({floor} MiB)" in line
    assert re.search(r"has \d+ MiB free", line)
    assert "0xA700" in line
    assert echo(node.port)
    wait_for(lambda: "C-ECHO from SCANNER answered" in node.log(), 10, "the C-ECHO warning")


@pytest.mark.parametrize(
    "changes",
    [
        {0x0110: None},
        {0x1000: None},
        {0x0100: None},
        {0x0100: struct.pack("<H", 0x1234)},
        {0x0800: None},
        {0x0100: struct.pack("<H", 0x8001), 0x0900: struct.pack("<H", 0)},
        {0x0002: b"1.2.840.10008.1.1"},
    ],
    ids=[
        "no-message-id",
        "no-affected-sop-instance-uid",
        "no-command-field",
        "unknown-command-field",
        "no-command-data-set-type",
        "a-response-to-nothing",
        "verification-class-on-a-ct-context",
    ],
)
def test_a_command_set_pynetdicom_cannot_serve_is_aborted(
    make_settings, start_node, ct_series, changes
):
    """Found by fuzzing (tests/fuzz). pynetdicom drops a C-STORE-RQ whose
    command set lacks an element it needs to answer, or a response to nothing,
    without a word: the sender waited for a status that never came and the
    association held one of the node's slots until it timed out. A command set
    it cannot decode at all (no or an unknown Command Field, no Command Data
    Set Type) ended its thread: the connection dropped without an A-ABORT and
    a traceback went past the node's log. A C-STORE-RQ naming the Verification
    SOP Class on a CT context went to the C-ECHO handler and got Success,
    nothing stored. Now each is an A-ABORT at once, and one log line."""
    settings = make_settings()
    start_node(settings)
    ds = ct_dataset(ct_series, size=16)
    whole = store_request(CT, ds.SOPInstanceUID.encode())
    fields: dict[int, bytes | None] = {}
    offset = 12  # after the group length
    while offset < len(whole):
        _, element, length = struct.unpack_from("<HHL", whole, offset)
        fields[element] = whole[offset + 8 : offset + 8 + length]
        offset += 8 + length
    fields.update(changes)
    command = command_set(sorted((e, v) for e, v in fields.items() if v is not None))
    assoc = RawAssociation(settings.node.port, SCANNER_AET, NODE_AET, CT)
    assoc.sock.settimeout(10)  # far more than an answer takes; less than the timeouts
    try:
        assoc.send_pdv(command, command=True, last=True)
        assoc.send_dataset(implicit_le(ds))
        kind, _ = assoc.read_pdu()
    finally:
        assoc.close()
    assert kind == 0x07, f"expected A-ABORT, got PDU type {kind:#x}"
    assert spool_files(settings.storage.spool_path) == []
    assert echo(settings.node.port)


def test_a_data_set_led_by_a_file_meta_element_is_refused_and_nothing_kept(
    make_settings, start_node, ct_series
):
    """Found by fuzzing (tests/fuzz): a data set whose first element is in
    group 0002 (here Specific Character Set's bytes under tag (0002,0000)) was
    answered Success and stored as a file pydicom cannot open: its File Meta
    Information reader takes the element for part of the header."""
    settings = make_settings()
    start_node(settings)
    ds = ct_dataset(ct_series, size=16)
    data = implicit_le(ds)
    assert data[:4] == struct.pack("<HH", 0x0008, 0x0005)
    assoc = RawAssociation(settings.node.port, SCANNER_AET, NODE_AET, CT)
    try:
        status = assoc.store(
            store_request(CT, ds.SOPInstanceUID.encode()),
            struct.pack("<HH", 0x0002, 0x0000) + data[4:],
        )
        assert status == 0xC210, hex(status)
        assert spool_files(settings.storage.spool_path) == []
    finally:
        assoc.release()
