"""The completeness check of a received dataset, fuzzed.

For any bytes made from valid datasets (cut, flipped, lengths and tags and VRs
rewritten, ranges inserted, deleted or repeated; in every native transfer
syntax and two encapsulated ones; one in ten claimed to be in another syntax
than it is encoded in), :func:`check_complete` either accepts and pydicom reads
the dataset to its last byte, or raises :class:`IncompleteDatasetError`: never
another exception, and never slowly.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.errors import IncompleteDatasetError
from dicomnode.ingress.integrity import check_complete
from tests.fuzz import note, rounds
from tests.fuzz.datasets import Seed, pydicom_reads_to_the_end
from tests.fuzz.mutations import Broken, broken_datasets

#: The most one check may take: datasets here are at most a few tens of KiB,
#: which the walk reads in well under a millisecond; far beyond any slow machine.
TIME_BOUND = 5.0


class TooSlow(Exception):
    """A check ran past :data:`TIME_BOUND`."""


@contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Interrupt the block (a hang, a loop that never ends) after ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TooSlow(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reason(exc: IncompleteDatasetError) -> str:
    """The kind of a refusal, without its positions and numbers."""
    text = str(exc)
    for kind in (
        "ends inside an element header",
        "declares",
        "no valid VR",
        "unknown VR",
        "undefined length",
        "expected an item",
        "unexpected delimiter",
        "delimiter",
        "nest deeper",
        "deflated",
    ):
        if kind in text:
            return kind
    return text


def check_one(case: Broken) -> None:
    """The property, on one case."""
    for mutation in case.mutations:
        note("integrity", f"mutated by {mutation}")
    try:
        with time_bound(TIME_BOUND):
            check_complete(case.data, case.syntax)
    except IncompleteDatasetError as exc:
        note("integrity", f"refused: {_reason(exc)}")
        return
    problem = pydicom_reads_to_the_end(case.data, case.syntax)
    assert problem is None, f"accepted, but pydicom does not read it to its end: {problem}"
    note("integrity", "accepted (pydicom reads it to its end)")


@settings(max_examples=2000)
@given(broken_datasets())
def _property(case: Broken) -> None:
    check_one(case)


def test_a_broken_dataset_is_refused_with_the_node_s_error_or_read_whole() -> None:
    rounds("integrity", _property)


_NOISE = Seed("random bytes", "1.2.840.10008.1.2", b"")


@settings(max_examples=50)
@given(st.binary(max_size=512), st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]))
def _noise(data: bytes, syntax: str) -> None:
    check_one(Broken(seed=_NOISE, syntax=syntax, data=data, mutations=("noise",)))


def test_noise_is_refused_with_the_node_s_error_or_read_whole() -> None:
    rounds("integrity", _noise)
