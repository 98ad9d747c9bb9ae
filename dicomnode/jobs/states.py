"""Job states and the transitions DESIGN.md allows between them."""

from __future__ import annotations

from enum import StrEnum

from dicomnode.errors import IllegalTransitionError, LeaseLostError


class JobState(StrEnum):
    """Where a unit of work stands."""

    RECEIVED = "RECEIVED"
    COMPLETE = "COMPLETE"
    ROUTED = "ROUTED"
    RUNNING = "RUNNING"
    RESULTS_WRITTEN = "RESULTS_WRITTEN"
    EXPORTING = "EXPORTING"
    DONE = "DONE"
    DISCARDED = "DISCARDED"
    FAILED_RETRYABLE = "FAILED_RETRYABLE"
    DEAD = "DEAD"


S = JobState

#: Every legal move. The happy path is RECEIVED → COMPLETE → ROUTED → RUNNING →
#: RESULTS_WRITTEN → EXPORTING → DONE; failures go through FAILED_RETRYABLE to a
#: retry or to DEAD; a hand retry (``dicomnode jobs retry``) or a replay takes a
#: DEAD or DONE job back to the step it repeats.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.RECEIVED: frozenset({S.COMPLETE}),
    S.COMPLETE: frozenset({S.ROUTED, S.DISCARDED}),
    S.ROUTED: frozenset({S.RUNNING, S.FAILED_RETRYABLE, S.DEAD}),
    S.RUNNING: frozenset({S.RESULTS_WRITTEN, S.FAILED_RETRYABLE, S.DEAD}),
    S.RESULTS_WRITTEN: frozenset({S.EXPORTING, S.DONE}),
    S.EXPORTING: frozenset({S.DONE, S.FAILED_RETRYABLE, S.DEAD}),
    S.FAILED_RETRYABLE: frozenset({S.ROUTED, S.RUNNING, S.EXPORTING, S.DEAD}),
    S.DEAD: frozenset({S.ROUTED, S.RESULTS_WRITTEN}),
    S.DONE: frozenset({S.RESULTS_WRITTEN}),
    S.DISCARDED: frozenset({S.COMPLETE}),
}


def check_transition(current: JobState, target: JobState) -> None:
    """Raise unless ``current`` → ``target`` is a legal transition.

    Raises
    ------
    IllegalTransitionError
        The move is not in :data:`TRANSITIONS`.
    """
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing"
        raise IllegalTransitionError(
            f"a job in {current} cannot move to {target} (allowed: {allowed})"
        )


#: States in which an admin may hold a job: it waits there, not routed, run
#: or delivered, until released. A RUNNING run is on a worker (hold it after
#: it wrote its results); DONE, DISCARDED and DEAD have nothing left to hold.
HOLDABLE: frozenset[JobState] = frozenset(
    {S.RECEIVED, S.COMPLETE, S.ROUTED, S.FAILED_RETRYABLE, S.RESULTS_WRITTEN, S.EXPORTING}
)


def check_hold(job_id: int, current: JobState) -> None:
    """Raise unless a job in ``current`` may be held.

    Raises
    ------
    IllegalTransitionError
        ``current`` is not in :data:`HOLDABLE`.
    """
    if current not in HOLDABLE:
        allowed = ", ".join(sorted(HOLDABLE))
        raise IllegalTransitionError(
            f"job {job_id} is {current}: only a job in {allowed} can be held"
        )


def check_discard(job_id: int, current: JobState, *, held: bool) -> None:
    """Raise unless discarding a job in ``current`` loses nothing: a DEAD job
    (it gave up already), or a held one (an admin stopped it on purpose).

    Raises
    ------
    IllegalTransitionError
        The job is live (not held) or finished.
    """
    if current == S.DEAD or (held and current in HOLDABLE):
        return
    why = "it is not held" if current in HOLDABLE else "there is nothing to discard"
    raise IllegalTransitionError(
        f"job {job_id} is {current} and {why}: only a DEAD job or a held one can be "
        "discarded (hold it first)"
    )


def check_holder(
    job_id: int,
    current: JobState,
    holder: str | None,
    lease_until: float | None,
    *,
    claimant: str | None,
    expired_at: float | None = None,
) -> None:
    """Raise unless ``claimant`` may record the outcome of run ``job_id``.

    A claim of a run records one outcome: only a RUNNING run takes one, so a
    second completion of the same run (a task executed twice, at least once
    delivery) is refused even where :data:`TRANSITIONS` has the move (DONE →
    RESULTS_WRITTEN is a replay of its deliveries, not a new result). A run a
    worker claimed (``holder``) takes outcomes from that worker only; the
    local runner (``claimant`` ``None``) claims without a name. With
    ``expired_at`` (a reclaim), the lease must have run out before that time.

    Raises
    ------
    LeaseLostError
        The run is not RUNNING, is held by another, or its lease is still live.
    """
    if current != JobState.RUNNING:
        raise LeaseLostError(f"run {job_id} is {current}: its outcome was already recorded")
    if claimant is not None and holder != claimant:
        raise LeaseLostError(
            f"run {job_id} is held by {holder or 'nobody'}, not {claimant}: its lease was "
            "lost and the run reclaimed"
        )
    if expired_at is not None and (lease_until is None or lease_until >= expired_at):
        raise LeaseLostError(f"run {job_id}: the lease of {holder} has not expired")
