"""The listener against real DCMTK peers on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomnode.config import Settings
from dicomnode.jobs import JobState
from tests.conftest import open_store
from tests.helpers import (
    NODE_AET,
    PEER_ENV,
    SCANNER_AET,
    assert_same_dataset,
    echo,
    require_tool,
    store_statuses,
    storescu,
)

pytestmark = pytest.mark.peers

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"
#: Real files shipped with pydicom, one per transfer syntax and a few non-image
#: classes, in two pushes: several samples share a SOP Instance UID, which the
#: node (rightly) keeps once.
SAMPLE_PUSHES = [
    [
        "CT_small.dcm",  # Explicit VR Little Endian
        "rtplan.dcm",  # Implicit VR Little Endian, RT Plan
        "ExplVR_BigEnd.dcm",  # Explicit VR Big Endian
        "image_dfl.dcm",  # Deflated Explicit VR Little Endian
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
        "693_J2KI.dcm",  # JPEG 2000
        "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 Lossless
        "examples_ybr_color.dcm",  # multi-frame JPEG Baseline
        "liver_1frame.dcm",  # Segmentation
        "test-SR.dcm",  # Comprehensive SR
        "waveform_ecg.dcm",  # 12-lead ECG
    ],
    [
        "SC_rgb_rle_16bit.dcm",  # RLE Lossless
        "rtdose.dcm",  # Implicit VR Little Endian, RT Dose
        "SC_rgb_small_odd_big_endian.dcm",
    ],
]


def spool_files(settings: Settings) -> list[Path]:
    return sorted((settings.storage.spool_path / "studies").rglob("*.dcm"))


def tmp_files(settings: Settings) -> list[Path]:
    return sorted((settings.storage.spool_path / "tmp").iterdir())


def test_echo(make_settings, start_node) -> None:
    settings = make_settings()
    start_node(settings)
    assert echo(settings.node.port)


def test_storescu_pushes_a_ct_series_each_instance_once(make_settings, start_node, ct_series):
    settings = make_settings()
    start_node(settings)
    series = ct_series(slices=64, size=64)
    result = storescu(series.paths, settings.node.port)
    assert result.returncode == 0, result.stderr
    assert store_statuses(result.stderr) == ["Success"] * 64
    stored = spool_files(settings)
    assert len(stored) == 64
    by_sop = {p.stem: p for p in stored}
    for sent, sop in zip(series.paths, series.sop_uids, strict=True):
        assert_same_dataset(sent, by_sop[sop])
    assert tmp_files(settings) == []
    store = open_store(settings)
    jobs = store.jobs(study_instance_uid=series.study_uid)
    assert [(j.round, j.state, j.instance_count) for j in jobs] == [(1, JobState.RECEIVED, 64)]
    records = store.instances(series.study_uid)
    assert sorted(r.sop_instance_uid for r in records) == sorted(series.sop_uids)
    assert {r.calling_ae for r in records} == {SCANNER_AET}


@pytest.mark.parametrize("names", SAMPLE_PUSHES, ids=["many-syntaxes", "rle-and-more"])
def test_dcmsend_pushes_real_files_in_their_own_syntaxes(make_settings, start_node, names):
    settings = make_settings()
    start_node(settings)
    files = [SAMPLES / name for name in names]
    sop_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(sop_uids) == len(files), "the sample list must not repeat a SOP Instance UID"
    result = subprocess.run(
        [
            require_tool("dcmsend"),
            "-v",
            "--decompress-never",
            "-aet",
            SCANNER_AET,
            "-aec",
            NODE_AET,
            "127.0.0.1",
            str(settings.node.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=PEER_ENV,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"with status SUCCESS  : {len(files)}" in result.stdout + result.stderr
    stored = {p.stem: p for p in spool_files(settings)}
    assert len(stored) == len(files)
    for sent in files:
        sop = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
        assert_same_dataset(sent, stored[str(sop)])


def test_unknown_calling_ae_is_rejected(make_settings, start_node, ct_series):
    settings = make_settings()
    start_node(settings)
    assert not echo(settings.node.port, calling="INTRUDER")
    result = storescu(ct_series(slices=2, size=16).paths, settings.node.port, calling="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert spool_files(settings) == []


def test_sender_tied_to_another_host_is_rejected(make_settings, start_node):
    settings = make_settings(
        ingress={"allowed_senders": [{"ae_title": "CTSCANNER", "host": "10.20.30.40"}]}
    )
    start_node(settings)
    assert not echo(settings.node.port, calling="CTSCANNER")


def test_allow_any_accepts_anyone(make_settings, start_node):
    settings = make_settings(ingress={"allow_any": True, "allowed_senders": []})
    start_node(settings)
    assert echo(settings.node.port, calling="ANYBODY")


def _rewrite(path: Path, out: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(out)
    return out


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
def test_malformed_or_missing_uids_get_a_failure_and_leave_nothing(
    make_settings, start_node, ct_series, tmp_path
):
    settings = make_settings()
    start_node(settings)
    series = ct_series(slices=4, size=16)
    bad = [
        _rewrite(series.paths[0], tmp_path / "letters.dcm", StudyInstanceUID="1.2.abc"),
        _rewrite(series.paths[1], tmp_path / "missing.dcm", SeriesInstanceUID=None),
        _rewrite(series.paths[2], tmp_path / "long.dcm", StudyInstanceUID="1." + "2" * 70),
        _rewrite(series.paths[3], tmp_path / "dots.dcm", StudyInstanceUID="1..2"),
    ]
    result = storescu(bad, settings.node.port, extra=["--no-halt"])
    statuses = store_statuses(result.stderr)
    assert len(statuses) == 4, result.stderr
    assert all(s.startswith("Error") for s in statuses), statuses
    assert spool_files(settings) == []
    assert tmp_files(settings) == []
    assert open_store(settings).jobs() == []


def test_full_disk_answers_out_of_resources(make_settings, start_node, ct_series):
    settings = make_settings(storage={"min_free_mb": 1 << 40})
    start_node(settings)
    result = storescu(ct_series(slices=1, size=16).paths, settings.node.port)
    assert store_statuses(result.stderr) == ["Refused: OutOfResources"], result.stderr
    assert spool_files(settings) == []
    assert tmp_files(settings) == []


def test_failing_write_answers_out_of_resources(make_settings, start_node, ct_series):
    """The spool's write of one instance really fails (a file stands where its
    study's folder must go): that instance is refused, the next is stored."""
    settings = make_settings()
    start_node(settings)
    small = ct_series(slices=1, size=64, name="small")
    big = ct_series(slices=1, size=512, name="big")
    (settings.storage.spool_path / "studies" / big.study_uid).write_bytes(b"in the way")
    result = storescu(big.paths + small.paths, settings.node.port, extra=["--no-halt"])
    assert store_statuses(result.stderr) == ["Refused: OutOfResources", "Success"], result.stderr
    assert [p.name for p in spool_files(settings)] == [small.sop_uids[0] + ".dcm"]
    assert tmp_files(settings) == []


def test_duplicate_is_kept_once_and_counted(make_settings, start_node, ct_series):
    settings = make_settings()
    start_node(settings)
    series = ct_series(slices=3, size=16)
    first = storescu(series.paths, settings.node.port)
    again = storescu(series.paths[:1], settings.node.port)
    assert store_statuses(first.stderr + again.stderr) == ["Success"] * 4
    assert len(spool_files(settings)) == 3
    store = open_store(settings)
    assert store.duplicates(series.sop_uids[0]) == 1
    assert [j.instance_count for j in store.jobs()] == [3]


def test_several_receiving_processes_share_the_port(make_settings, start_node, ct_series):
    settings = make_settings(ingress={"processes": 2})
    start_node(settings)
    series = ct_series(slices=40, size=32)
    procs = [
        subprocess.Popen(
            [
                require_tool("storescu"),
                "-aet",
                SCANNER_AET,
                "-aec",
                NODE_AET,
                "127.0.0.1",
                str(settings.node.port),
                *map(str, series.paths[i::4]),
            ],
            env=PEER_ENV,
        )
        for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert len(spool_files(settings)) == 40
    jobs = open_store(settings).jobs()
    assert [(j.round, j.instance_count) for j in jobs] == [(1, 40)]


def test_open_associations_poll_at_the_configured_interval(make_settings, start_node):
    settings = make_settings(ingress={"poll_interval_ms": 5})
    node = start_node(settings)
    ae = AE(ae_title=SCANNER_AET)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", settings.node.port, ae_title=NODE_AET)
    try:
        assert assoc.is_established
        assert node.ingress is not None
        (accepted,) = node.ingress._server.active_associations
        assert accepted.dul._run_loop_delay == pytest.approx(0.005)
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
