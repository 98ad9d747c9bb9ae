"""Retention: a study's finished work leaves the spool after a while.

A study qualifies once every job of it is finished (pipeline runs DONE or
DEAD; assembly rounds DISCARDED, or ROUTED: their runs are jobs of their own),
no delivery is pending, and nothing happened to it for
``storage.retention_days``. Its purge runs in three steps, in this order:

1. the job store lists, in one snapshot, the jobs and the exact files of their
   instance rows and result objects, and the runs' result and outbox folders;
2. exactly those files are deleted (never the study directory as a whole: a
   late instance of the same study may be arriving into it), then the
   directories that became empty, then the runs' folders; missing files are
   fine, so a purge can be repeated;
3. one job-store transaction checks that the jobs did not move, deletes their
   instance rows and marks them purged; the jobs and their history stay.

Files go before rows on purpose: a crash between steps 2 and 3 leaves rows of
missing files, which the next pass completes; rows deleted first would leave
files without rows, which start-up recovery would record as a new round.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.config import StorageConfig
from dicomnode.errors import JobStoreError, SpoolError
from dicomnode.jobs.models import PurgePlan
from dicomnode.jobs.ports import RetentionStore
from dicomnode.scheduling import every
from dicomnode.spool.store import Spool

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    """What one purge (of a study, or a whole pass) removed.

    Attributes
    ----------
    studies : int
        Studies whose purge was recorded in the job store.
    files : int
        Files deleted (instances, result objects, files in result folders).
    bytes : int
        Their size.
    """

    studies: int = 0
    files: int = 0
    bytes: int = 0

    def __add__(self, other: PurgeReport) -> PurgeReport:
        return PurgeReport(
            self.studies + other.studies, self.files + other.files, self.bytes + other.bytes
        )


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def _prune(spool: Spool, directory: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, below the
    spool's top-level folders (``studies/``, ``outbox/`` ... stay)."""
    root = _absolute(spool.root)
    current = _absolute(directory)
    while _inside(current, root) and current.parent != root:
        try:
            os.rmdir(current)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                LOGGER.warning("could not remove directory %s: %s", current, exc.strerror)
            return
        current = current.parent


def _removable_folder(spool: Spool, folder: Path) -> bool:
    """A run's folder may go unless it holds (or is) a part of the spool
    that is not the run's: the root, the studies, partial writes."""
    absolute = _absolute(folder)
    protected = [_absolute(p) for p in (spool.root, spool.studies_dir, spool.tmp_dir)]
    if any(absolute == p or p.is_relative_to(absolute) for p in protected):
        return False
    return not absolute.is_relative_to(_absolute(spool.studies_dir))


def _remove_folder(folder: Path) -> tuple[int, int]:
    """Delete a run's folder; return (files, bytes). A missing folder is fine."""
    files = size = 0
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return 0, 0
    return files, size


def remove_files(spool: Spool, plan: PurgePlan) -> PurgeReport:
    """Step two of a purge: delete the plan's files and folders.

    Parameters
    ----------
    spool : Spool
        The spool the files are in (bounds the removal of empty directories).
    plan : PurgePlan
        From :meth:`dicomnode.jobs.ports.RetentionStore.purge_plan`.

    Returns
    -------
    PurgeReport
        The files and bytes deleted (``studies`` is 0: nothing is recorded yet).

    Raises
    ------
    SpoolError
        A file or folder could not be deleted (other than being missing
        already); the rest were, and the purge must not be recorded.
    """
    failures: list[str] = []
    files = size = 0
    parents: set[Path] = set()
    for name in plan.files:
        path = Path(name)
        parents.add(path.parent)
        try:
            length = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            failures.append(f"{path}: {exc.strerror}")
            continue
        files += 1
        size += length
    for directory in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        _prune(spool, directory)
    for name in plan.folders:
        folder = Path(name)
        if not _removable_folder(spool, folder):
            failures.append(f"{folder}: not a run's own folder, left in place")
            continue
        try:
            removed, length = _remove_folder(folder)
        except OSError as exc:
            failures.append(f"{folder}: {exc.strerror}")
            continue
        files += removed
        size += length
    if failures:
        raise SpoolError(
            f"study {plan.study_instance_uid}: {len(failures)} file(s) or folder(s) could not "
            f"be removed, the first {failures[0]}"
        )
    return PurgeReport(files=files, bytes=size)


def purge_study(
    spool: Spool, store: RetentionStore, study_instance_uid: str, cutoff: float, now: float
) -> PurgeReport:
    """Purge one study's finished work if it still qualifies.

    Parameters
    ----------
    spool : Spool
        The instance store.
    store : RetentionStore
        The job store.
    study_instance_uid : str
        The study.
    cutoff : float
        Only activity before this time (seconds since the epoch) lets it go.
    now : float
        The time recorded as the jobs' ``purged_at``.

    Returns
    -------
    PurgeReport
        ``studies`` is 1 when the purge was recorded.

    Raises
    ------
    SpoolError
        A file could not be deleted; nothing was recorded.
    JobStoreError
        The job store failed.
    """
    plan = store.purge_plan(study_instance_uid, cutoff)
    if plan is None:
        return PurgeReport()
    removed = remove_files(spool, plan)
    rows = store.mark_purged(plan, now)
    extra = {"study_uid": study_instance_uid}
    if rows is None:
        LOGGER.warning(
            "study %s: a job moved while it was purged; its rows are kept for the next pass",
            study_instance_uid,
            extra=extra,
        )
        return removed
    LOGGER.info(
        "study %s purged: %d job(s), %d instance row(s), %d file(s), %d bytes",
        study_instance_uid,
        len(plan.jobs),
        rows,
        removed.files,
        removed.bytes,
        extra=extra,
    )
    return removed + PurgeReport(studies=1)


class RetentionSweeper:
    """Purges expired studies every ``storage.retention_check_seconds``.

    Parameters
    ----------
    config : StorageConfig
        ``retention_days`` (``None``: purge nothing) and ``retention_check_seconds``.
    spool : Spool
        The instance store.
    store : RetentionStore
        The job store.
    clock : callable, optional
        Current time in seconds since the epoch.

    Attributes
    ----------
    passes : int
        Passes completed since the sweeper was made.
    last_pass_at : float or None
        The time the last completed pass judged expiry by.
    """

    JOB_ID = "dicomnode-retention"

    def __init__(
        self,
        config: StorageConfig,
        spool: Spool,
        store: RetentionStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spool = spool
        self.store = store
        self.clock = clock
        self.passes = 0
        self.last_pass_at: float | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._stopping = threading.Event()

    def run_once(self) -> PurgeReport:
        """Purge every study that expired by now; return what was removed."""
        period = self.config.retention_seconds
        now = self.clock()
        total = PurgeReport()
        if period is not None:
            for study_uid in self.store.expired_studies(now - period):
                if self._stopping.is_set():
                    break
                try:
                    total += purge_study(self.spool, self.store, study_uid, now - period, now)
                except (SpoolError, JobStoreError) as exc:
                    LOGGER.error("retention: study %s was not purged: %s", study_uid, exc)
        if total.studies:
            LOGGER.info(
                "retention: purged %d study(ies), %d file(s), %d bytes (no activity for %g day(s))",
                total.studies,
                total.files,
                total.bytes,
                self.config.retention_days,
            )
        self.passes += 1
        self.last_pass_at = now
        return total

    def start(self) -> None:
        """Purge now and then every ``retention_check_seconds``; nothing when
        retention is off."""
        if self.config.retention_days is None:
            LOGGER.info("retention is off (storage.retention_days: null): nothing is purged")
            return
        period = self.config.retention_seconds or 0.0
        due = len(self.store.expired_studies(self.clock() - period))
        LOGGER.warning(
            "retention is on: the received instances and result objects (patient data) of "
            "every study whose work is all DONE, DISCARDED or DEAD are deleted from %s and "
            "%s %g day(s) after its last activity (storage.retention_days), checked every %g s; "
            "%d study(ies) qualify now and go in the first pass; job rows and their history "
            "are kept",
            self.spool.root,
            self.config.data_dir / "results",
            self.config.retention_days,
            self.config.retention_check_seconds,
            due,
        )
        self._stopping.clear()
        self._scheduler = every(self.config.retention_check_seconds, self.run_once, self.JOB_ID)

    @property
    def running(self) -> bool:
        """Whether passes are scheduled."""
        return self._scheduler is not None

    def stop(self) -> None:
        """Stop the passes, ending one in progress after its current study."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
