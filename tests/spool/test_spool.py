"""The spool: UID-safe paths, atomic durable writes, nothing half-written."""

from __future__ import annotations

import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from dicomnode.errors import InvalidUIDError, SpoolWriteError
from dicomnode.spool import Spool, validate_uid

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "1", "1.2.0003", "9" * 64])
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid) == uid


def test_padding_is_stripped() -> None:
    assert validate_uid("1.2.3\x00") == "1.2.3"
    assert validate_uid("1.2.3 ") == "1.2.3"


@pytest.mark.parametrize(
    "uid", ["", None, "1" * 65, "1.2.abc", "..", "1..2", ".1", "1.", "../../etc", "1/2", "1.2\n"]
)
def test_invalid_uids(uid: object) -> None:
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, "StudyInstanceUID")


def test_store_writes_the_bytes_under_uid_paths(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    stored = spool.store(STUDY, SERIES, SOP, b"first")
    assert stored.path == tmp_path / "spool" / "studies" / STUDY / SERIES / f"{SOP}.dcm"
    assert stored.path.read_bytes() == b"first"
    assert not stored.existed
    assert list(spool.tmp_dir.iterdir()) == []
    assert list(spool.iter_instances()) == [stored.path]


def test_duplicate_keeps_the_first_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.store(STUDY, SERIES, SOP, b"first")
    again = spool.store(STUDY, SERIES, SOP, b"second")
    assert again.existed
    assert again.path.read_bytes() == b"first"
    assert list(spool.tmp_dir.iterdir()) == []


def test_invalid_uid_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUIDError):
        spool.store("1.2.3", "../..", SOP, b"x")
    assert list(spool.studies_dir.iterdir()) == []
    assert list(spool.tmp_dir.iterdir()) == []


def test_free_space_floor_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 62)
    with pytest.raises(SpoolWriteError) as info:
        spool.store(STUDY, SERIES, SOP, b"x" * 1000)
    assert "below the configured minimum" in str(info.value)
    assert list(spool.studies_dir.iterdir()) == []
    assert list(spool.tmp_dir.iterdir()) == []


def test_a_failing_write_leaves_nothing_behind(tmp_path: Path) -> None:
    """A real write failure: the file-size limit makes write() fail with EFBIG."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from dicomnode.spool import Spool
        from dicomnode.errors import SpoolWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        spool = Spool(Path({str(tmp_path / "spool")!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            spool.store("{STUDY}", "{SERIES}", "{SOP}", b"x" * 100_000)
        except SpoolWriteError as exc:
            print("refused", exc.errno)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("refused"), result.stdout + result.stderr
    spool = Spool(tmp_path / "spool")
    assert list(spool.tmp_dir.iterdir()) == []
    assert list(spool.iter_instances()) == []


def test_clean_tmp_removes_partial_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp_dir / "1.2.3.123.abc.part").write_bytes(b"partial")
    assert spool.clean_tmp() == 1
    assert list(spool.tmp_dir.iterdir()) == []


def test_remove_deletes_one_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    stored = spool.store(STUDY, SERIES, SOP, b"x")
    spool.remove(stored.path)
    assert not stored.path.exists()


def test_store_file_links_a_file_on_the_same_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    received = tmp_path / "received.dcm"
    received.write_bytes(b"received")
    stored = spool.store_file(STUDY, SERIES, SOP, received)
    assert stored.path.read_bytes() == b"received" and stored.size == 8
    assert stored.path.stat().st_ino == received.stat().st_ino  # linked, not copied
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o640
    received.unlink()  # pynetdicom removes its file after the handler
    assert stored.path.read_bytes() == b"received"
    assert list(spool.tmp_dir.iterdir()) == []


def test_store_file_copies_from_another_file_system(tmp_path: Path) -> None:
    """/dev/shm is a tmpfs: a hard link from there into the spool is refused."""
    spool = Spool(tmp_path / "spool")
    with tempfile.NamedTemporaryFile(dir="/dev/shm", suffix=".dcm") as received:
        received.write(b"x" * 3_000_000)
        received.flush()
        stored = spool.store_file(STUDY, SERIES, SOP, Path(received.name))
        assert stored.path.stat().st_ino != Path(received.name).stat().st_ino
        assert stat.S_IMODE(stored.path.stat().st_mode) == 0o640
    assert stored.path.read_bytes() == b"x" * 3_000_000
    again = spool.store_file(STUDY, SERIES, SOP, stored.path)
    assert again.existed
    assert list(spool.tmp_dir.iterdir()) == []


def test_store_file_below_the_floor_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 60)
    received = tmp_path / "received.dcm"
    received.write_bytes(b"received")
    with pytest.raises(SpoolWriteError):
        spool.store_file(STUDY, SERIES, SOP, received)
    assert list(spool.tmp_dir.iterdir()) == []
    assert not (spool.studies_dir / STUDY).exists()
