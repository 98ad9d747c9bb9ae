"""The C-STORE SCU (``dicomnode send``, and the export stage's sender) against
real peers: each file travels in its own transfer syntax where the peer takes
it, decoded only where the peer takes nothing but uncompressed, and more than
128 presentation contexts go over several associations."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from dicomnode.config import Settings
from dicomnode.export import FailureKind, SendFailure, SendReport, collect_files, send_files
from dicomnode.export.dispatcher import permanent
from dicomnode.export.storescu import (
    MAX_CONTEXTS,
    UNCOMPRESSED,
    OutgoingFile,
    plan_associations,
    status_category,
)
from tests.helpers import NODE_AET, PEER_ENV, assert_same_dataset, free_port, require_tool, wait_for
from tests.orthanc import Orthanc

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"

#: pydicom's own samples, one SOP Instance UID each, covering the syntaxes
#: that failed before: every one of them was refused with "No presentation
#: context ... accepted" by a peer that takes them all.
SAMPLE_SYNTAXES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rtplan.dcm": "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "693_J2KI.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "GDCMJ2K_TextGBR.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "rtdose_rle.dcm": "1.2.840.10008.1.2.5",  # RLE Lossless, 32 bits, 15 frames
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "ExplVR_BigEnd.dcm": "1.2.840.10008.1.2.2",  # Explicit VR Big Endian, 8 bits
    "SC_rgb_small_odd_big_endian.dcm": "1.2.840.10008.1.2.2",  # big endian, 8 bits in OW
}


def dicomnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def send(folder: Path, port: int, aet: str) -> subprocess.CompletedProcess[str]:
    return dicomnode("send", str(folder), "--to", f"127.0.0.1:{port}", "--aet", aet, "-q")


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, Path]:
    """The samples copied into one folder, by SOP Instance UID."""
    folder = tmp_path / "samples"
    folder.mkdir()
    by_uid = {}
    for name, syntax in SAMPLE_SYNTAXES.items():
        path = Path(shutil.copy(SAMPLES / name, folder / name))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == syntax, name
        by_uid[str(ds.SOPInstanceUID)] = path
    assert len(by_uid) == len(SAMPLE_SYNTAXES), "the samples must not repeat a SOP Instance UID"
    return by_uid


def by_sop_uid(files: Iterator[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}


def assert_stored_as_sent(samples: dict[str, Path], stored: dict[str, Path]) -> None:
    assert sorted(stored) == sorted(samples)
    for uid, sent in samples.items():
        syntax = pydicom.dcmread(stored[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert syntax == SAMPLE_SYNTAXES[sent.name], f"{sent.name} arrived as {syntax.name}"


@pytest.mark.peers
def test_send_to_the_node_keeps_every_files_own_syntax(make_settings, start_node, samples):
    settings: Settings = make_settings()
    start_node(settings)
    folder = next(iter(samples.values())).parent
    result = send(folder, settings.node.port, NODE_AET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sent {len(samples)}, failed 0, skipped 0" in result.stdout
    assert "sent uncompressed" not in result.stdout
    stored = by_sop_uid((settings.storage.spool_path / "studies").rglob("*.dcm"))
    assert_stored_as_sent(samples, stored)
    for uid, sent in samples.items():
        assert_same_dataset(sent, stored[uid])


@pytest.mark.peers
@pytest.mark.slow
def test_send_to_orthanc_keeps_every_files_own_syntax(samples, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc")
    try:
        orthanc.start()
        folder = next(iter(samples.values())).parent
        result = send(folder, orthanc.dicom_port, Orthanc.AET)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"sent {len(samples)}, failed 0" in result.stdout
        back = tmp_path / "back"
        back.mkdir()
        for n, instance in enumerate(orthanc.get("/instances")):
            url = orthanc.url(f"/instances/{instance}/file")
            with urllib.request.urlopen(url, timeout=30) as response:
                (back / f"{n}.dcm").write_bytes(response.read())
        assert_stored_as_sent(samples, by_sop_uid(back.iterdir()))
    finally:
        orthanc.stop()


@contextmanager
def storescp(tmp_path: Path, *options: str) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port, writing what it receives to a folder."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    log_path = tmp_path / "storescp.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [require_tool("storescp"), "-v", *options, "-od", str(out), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=PEER_ENV,
        )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text(errors="replace"))
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 20, "storescp to listen", interval=0.1)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def undecodable_copy(source: Path, target: Path) -> Path:
    """An encapsulated image whose meta says MPEG2: no decoder here reads it."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.mark.peers
def test_a_peer_taking_only_implicit_vr_gets_decoded_copies_of_what_can_be_decoded(
    samples, tmp_path
):
    folder = next(iter(samples.values())).parent
    video = undecodable_copy(SAMPLES / "SC_rgb_jpeg_dcmtk.dcm", folder / "video.dcm")
    with storescp(tmp_path, "+xi") as (port, out):
        result = send(folder, port, "STORESCP")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"sent {len(samples)}, failed 1, skipped 0" in result.stdout
    compressed_or_not_little = [
        p for p in samples.values() if SAMPLE_SYNTAXES[p.name] not in UNCOMPRESSED
    ]
    assert f"{len(compressed_or_not_little)} of them sent uncompressed" in result.stdout
    (failure,) = [line for line in result.stderr.splitlines() if line.startswith("failed")]
    assert str(video) in failure and "no decoder here reads it" in failure, failure

    stored = by_sop_uid(p for p in out.iterdir() if p.is_file())
    assert sorted(stored) == sorted(samples)
    for uid, sent in samples.items():
        original, received = pydicom.dcmread(sent), pydicom.dcmread(stored[uid])
        assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian, sent.name
        assert received.SOPInstanceUID == original.SOPInstanceUID
        if "PixelData" in original:
            assert (received.pixel_array == original.pixel_array).all(), sent.name
        if original.get("LossyImageCompression") is not None:
            assert received.LossyImageCompression == original.LossyImageCompression


def many_classes(folder: Path, count: int) -> list[Path]:
    """``count`` tiny instances of one study, each of another storage SOP class."""
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    paths = []
    for n, context in enumerate(AllStoragePresentationContexts[:count]):
        ds = pydicom.Dataset()
        ds.SOPClassUID = context.abstract_syntax
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.Modality, ds.InstanceNumber = "PHANTOM-001", "OT", n + 1
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        paths.append(folder / f"{n:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.peers
def test_more_than_128_contexts_go_over_two_associations(make_settings, start_node, tmp_path):
    settings: Settings = make_settings()
    start_node(settings)
    paths = many_classes(tmp_path / "many", MAX_CONTEXTS + 2)
    result = send(tmp_path / "many", settings.node.port, NODE_AET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sent {len(paths)}, failed 0" in result.stdout
    stored = by_sop_uid((settings.storage.spool_path / "studies").rglob("*.dcm"))
    assert sorted(stored) == sorted(by_sop_uid(iter(paths)))


def test_contexts_one_per_class_and_syntax_plus_one_uncompressed_where_decodable():
    ct, sc = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"
    files = [
        OutgoingFile(Path("a"), ct, ExplicitVRLittleEndian),
        OutgoingFile(Path("b"), ct, ImplicitVRLittleEndian),
        OutgoingFile(Path("c"), sc, JPEGBaseline8Bit),
        OutgoingFile(Path("d"), sc, JPEG2000Lossless),
        OutgoingFile(Path("e"), ct, MPEG2MPML),
        OutgoingFile(Path("f"), sc, JPEGBaseline8Bit),
    ]
    ((contexts, batch),) = plan_associations(files)
    assert batch == files
    assert contexts == [
        (ct, (ExplicitVRLittleEndian,)),
        (ct, UNCOMPRESSED),
        (ct, (ImplicitVRLittleEndian,)),
        (sc, (JPEGBaseline8Bit,)),
        (sc, UNCOMPRESSED),
        (sc, (JPEG2000Lossless,)),
        (ct, (MPEG2MPML,)),  # no decoder: no uncompressed copy of it is offered
    ]

    # 70 classes of JPEG 2000 files: two contexts each, 140 in all
    many = [
        OutgoingFile(Path(str(n)), str(cx.abstract_syntax), JPEG2000Lossless)
        for n, cx in enumerate(AllStoragePresentationContexts[:70])
    ]
    plans = plan_associations(many)
    assert [len(c) for c, _ in plans] == [128, 12]
    assert [f for _, b in plans for f in b] == many


@contextmanager
def answering_pacs(status: int) -> Iterator[int]:
    """A pynetdicom Storage SCP that answers every C-STORE with ``status``."""
    ae = AE(ae_title="PACS")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: status)]
    )
    try:
        yield port
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("status", "stored", "retry"),
    [(0xA700, False, True), (0xA900, False, False), (0xC000, False, True), (0xB000, True, None)],
)
def test_a_status_is_kept_as_the_integer_the_peer_sent(
    tmp_path, status: int, stored: bool, retry: bool | None
):
    path = Path(shutil.copy(SAMPLES / "CT_small.dcm", tmp_path / "ct.dcm"))
    files = collect_files([path], SendReport())
    with answering_pacs(status) as port:
        report = send_files(files, "127.0.0.1", port, "PACS", "DICOMNODE")
    if stored:
        assert report.sent == [path] and report.failed == []
        return
    (failure,) = report.failed
    assert failure == SendFailure(path, FailureKind.STATUS, failure.reason, status)
    assert f"0x{status:04X}" in failure.reason
    assert status_category(status).value == "Failure"
    assert permanent(failure) is not retry


def test_only_a_status_failure_carries_a_status():
    with pytest.raises(ValueError, match="status"):
        SendFailure(Path("x"), FailureKind.NO_RESPONSE, "timeout", 0xA700)
    with pytest.raises(ValueError, match="status"):
        SendFailure(Path("x"), FailureKind.STATUS, "failed")
    assert permanent(SendFailure(Path("x"), FailureKind.NOT_ACCEPTED, "SOP class not supported"))
    assert not permanent(SendFailure(Path("x"), FailureKind.NO_RESPONSE, "association lost"))
    assert not permanent(SendFailure(Path("x"), FailureKind.LOCAL, "OSError"))
