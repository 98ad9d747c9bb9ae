"""Volumes read while their study's quiet period runs.

Between a study's last instance and its run lies the assembly quiet period,
during which an idle worker has nothing to do. The runner asks one to read the
study's instances then (:class:`Prefetch`); the worker keeps one volume per
series with its headers (:class:`SeriesCache`), and a run whose input is
exactly one of those series starts with its volume in memory.

Nothing read early is trusted blindly: each file's inode, size and
modification time are noted when it is read and checked again when the run
takes the volume; a file that changed, went or came since means the run reads
its series again, as it would without a prefetch. A volume is given to one
run only (a pipeline may change the array it gets), and the cache is dropped
when its time runs out or the next prefetch replaces it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomnode.errors import VolumeError
from dicomnode.protocol import Volume
from dicomnode.runner.volume import drop_pixels, load_series_datasets, read_series

__all__ = ["Prefetch", "SeriesCache"]

LOGGER = logging.getLogger(__name__)

#: What identifies a file's content as read: inode, size, modification time (ns).
Signature = tuple[int, int, int]


@dataclass(frozen=True)
class Prefetch:
    """A request to a worker: read these instances now (one study, any
    series), keep their volumes ``keep_seconds``."""

    files: tuple[str, ...]
    keep_seconds: float


@dataclass(frozen=True)
class _Series:
    signatures: dict[str, Signature]
    datasets: list[Dataset]
    volume: Volume


def signature(path: str) -> Signature | None:
    """The file's inode, size and modification time; ``None`` when it is gone."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class SeriesCache:
    """The volumes a worker read ahead, one per series, for one run each.

    Parameters
    ----------
    clock : callable
        Monotonic seconds (for the expiry).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._series: dict[frozenset[str], _Series] = {}
        self._until = 0.0

    def __len__(self) -> int:
        return len(self._series)

    def fill(self, request: Prefetch) -> int:
        """Replace the cache with the volumes of the request's series; return
        how many series became volumes. A file that cannot be read, or a series
        that is no volume, is left out: its run reads it and says why."""
        self.clear()
        by_series: dict[str, list[tuple[str, Signature, Dataset]]] = {}
        for path in request.files:
            before = signature(path)
            try:
                (ds,) = read_series([path])
            except VolumeError:
                continue
            if before is None or signature(path) != before:
                continue  # changed while it was read
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(
                (path, before, ds)
            )
        for uid, members in by_series.items():
            if not uid:
                continue
            datasets = [ds for _, _, ds in members]
            try:
                volume = load_series_datasets(datasets)
            except VolumeError:
                continue
            drop_pixels(datasets)
            files = frozenset(path for path, _, _ in members)
            self._series[files] = _Series({p: s for p, s, _ in members}, datasets, volume)
        self._until = self.clock() + request.keep_seconds
        return len(self._series)

    def take(self, files: Sequence[str]) -> tuple[list[Dataset], Volume] | None:
        """The headers and volume read ahead for exactly these files, when each
        file is still the one read; else ``None``. Either way they are no
        longer kept."""
        entry = self._series.pop(frozenset(files), None)
        if entry is None or self.clock() > self._until:
            return None
        if any(signature(path) != entry.signatures[path] for path in files):
            LOGGER.info("a file of the series changed since it was read ahead; reading it again")
            return None
        return entry.datasets, entry.volume

    def wait_seconds(self) -> float | None:
        """Seconds until the cache expires; ``None`` when it is empty."""
        if not self._series:
            return None
        return max(0.0, self._until - self.clock())

    def clear(self) -> None:
        """Drop everything read ahead."""
        self._series.clear()
