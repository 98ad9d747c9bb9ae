"""Atomic, durable instance files.

Layout under the spool root::

    tmp/                          partial writes, removed on failure and at start-up
    studies/<study>/<series>/<sop>.dcm

A file appears under ``studies/`` only complete and fsynced, and its directory
entry is fsynced too, so once :meth:`Spool.store` returns the instance survives
a crash or power loss.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dicomnode.errors import SpoolWriteError
from dicomnode.spool.uids import validate_uid
from dicomnode.writers import left_by_a_gone_writer, writer_tag

LOGGER = logging.getLogger(__name__)

SUFFIX = ".dcm"
#: Tries to link a new file into a directory retention may be removing.
_LINK_ATTEMPTS = 5
#: Bytes per read when copying a received file into the spool.
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    """Where an instance landed.

    Attributes
    ----------
    path : Path
        The instance file in the spool.
    size : int
        Bytes written.
    existed : bool
        ``True`` when a file for this SOP Instance UID was already there; the
        new bytes were discarded and the first copy kept.
    """

    path: Path
    size: int
    existed: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The mode of every instance file in the spool: read-write for the node's user,
#: read for its group, nothing for others.
_FILE_MODE = 0o640


def _copy(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target`` (which must not exist), 1 MiB at a time."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


class Spool:
    """The instance store on local disk.

    Parameters
    ----------
    root : Path
        The spool directory; created when missing.
    min_free_bytes : int
        Refuse writes that would leave less free space than this on the disk.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.tmp_dir = self.root / "tmp"
        self.studies_dir = self.root / "studies"
        self._dir_lock = threading.Lock()
        for directory in (self.root, self.tmp_dir, self.studies_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Return the path an instance has in the spool (UIDs validated first).

        Raises
        ------
        InvalidUIDError
            One of the UIDs is not safe to use.
        """
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        sop = validate_uid(sop_uid, "SOPInstanceUID")
        return self.studies_dir / study / series / (sop + SUFFIX)

    def _ensure_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        with self._dir_lock:
            missing: list[Path] = []
            probe = directory
            while not probe.is_dir():
                missing.append(probe)
                probe = probe.parent
            for new in reversed(missing):
                try:
                    new.mkdir()
                except FileExistsError:
                    if not new.is_dir():
                        raise
                _fsync_dir(new.parent)

    def free_bytes(self) -> int:
        """Free space on the spool's disk, in bytes (as an unprivileged writer sees it)."""
        stats = os.statvfs(self.tmp_dir)
        return int(stats.f_bavail * stats.f_frsize)

    def below_floor(self) -> bool:
        """Whether the disk has less free space than ``min_free_bytes``: every
        write is refused until space is freed."""
        return self.min_free_bytes > 0 and self.free_bytes() < self.min_free_bytes

    def _check_free_space(self, needed: int) -> None:
        if self.min_free_bytes <= 0:
            return
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise SpoolWriteError(
                errno.ENOSPC,
                f"spool disk has {free // (1024 * 1024)} MiB free, "
                f"below the configured minimum of {self.min_free_bytes // (1024 * 1024)} MiB",
            )

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> StoredFile:
        """Write one instance durably, keeping the first copy of a SOP Instance UID.

        The bytes go to a temporary file that is fsynced, then linked into its
        final place (which never overwrites), then the directory is fsynced.

        Parameters
        ----------
        study_uid, series_uid, sop_uid : str
            The instance's UIDs; validated before any use in a path.
        data : bytes
            The encoded DICOM file (preamble, meta, dataset) as received.

        Returns
        -------
        StoredFile
            The final path and whether an earlier copy was already there.

        Raises
        ------
        InvalidUIDError
            A UID is not safe to use as a path.
        SpoolWriteError
            The disk refused the write; no partial file is left behind.
        """

        def write(tmp: Path) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)

        return self._place(study_uid, series_uid, sop_uid, lambda: len(data), write)

    def store_file(self, study_uid: str, series_uid: str, sop_uid: str, source: Path) -> StoredFile:
        """Like :meth:`store`, for an instance that is already in a file.

        The file is hard-linked into the spool when it lies on the spool's
        file system, and copied in bounded chunks otherwise; either way it is
        fsynced before it is linked into its final place. ``source`` is left
        where it is (its owner removes it).

        Parameters
        ----------
        study_uid, series_uid, sop_uid : str
            The instance's UIDs; validated before any use in a path.
        source : Path
            The encoded DICOM file (preamble, meta, dataset) as received.

        Raises
        ------
        InvalidUIDError
            A UID is not safe to use as a path.
        SpoolWriteError
            The disk refused the write; no partial file is left behind.
        """

        def write(tmp: Path) -> None:
            try:
                os.link(source, tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                _copy(source, tmp)
            # patient data: owner and group only, whatever mode the received file had
            # (pynetdicom's temporary file is 0600) and whatever the umask
            os.chmod(tmp, _FILE_MODE)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        return self._place(study_uid, series_uid, sop_uid, lambda: source.stat().st_size, write)

    def _place(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        size: Callable[[], int],
        write: Callable[[Path], None],
    ) -> StoredFile:
        """Check the floor for ``size()`` bytes, let ``write`` make a new fsynced
        file at a temporary path in ``tmp/``, then link it into its final place
        (never overwriting) and fsync the folder; nothing is left on failure."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        tmp = self.tmp_dir / f"{final.stem}.{writer_tag()}.{secrets.token_hex(6)}.part"
        try:
            length = size()
            self._check_free_space(length)
            write(tmp)
            existed = self._link(tmp, final)
            os.unlink(tmp)
            if not existed:
                _fsync_dir(final.parent)
        except SpoolWriteError:
            raise
        except OSError as exc:
            self._discard(tmp)
            raise SpoolWriteError(
                exc.errno, f"writing to the spool failed: {exc.strerror}"
            ) from exc
        return StoredFile(path=final, size=length, existed=existed)

    def _link(self, tmp: Path, final: Path) -> bool:
        """Link ``tmp`` to ``final`` (never overwriting); return whether a file
        was already there. Retention removes directories that became empty,
        so one may vanish between creating it and linking into it: then it is
        created again."""
        attempts = 0
        while True:
            try:
                self._ensure_dir(final.parent)
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return True
                return False
            except FileNotFoundError:
                attempts += 1
                if attempts >= _LINK_ATTEMPTS:
                    raise

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            LOGGER.error("could not remove partial file %s: %s", path.name, exc.strerror)

    def remove(self, path: Path) -> None:
        """Remove one instance file (used when the job store rejects a copy)."""
        self._discard(path)
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            LOGGER.warning("could not fsync %s after removal: %s", path.parent, exc.strerror)

    def clean_tmp(self) -> int:
        """Remove partial files a crash may have left; return how many. Files
        other processes are writing (another node sharing the spool, a
        receiving process) are left alone (see :mod:`dicomnode.writers`)."""
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            if left_by_a_gone_writer(leftover.name):
                self._discard(leftover)
                removed += 1
        return removed

    def iter_instances(self) -> Iterator[Path]:
        """Yield every instance file in the spool."""
        for study in sorted(self.studies_dir.iterdir()):
            if not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir():
                    yield from sorted(series.glob("*" + SUFFIX))
