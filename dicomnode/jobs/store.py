"""The job store interface every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dicomnode.jobs.models import InstanceRecord, Job
from dicomnode.jobs.ports import (
    AdminStore,
    AssemblyStore,
    CorrectionSource,
    ExportStore,
    IngressStore,
    RetentionStore,
    RoutingStore,
    RunnerStore,
    ShadowSource,
)
from dicomnode.jobs.states import JobState

if TYPE_CHECKING:
    from dicomnode.jobs.sqlstore import SQLJobStore


class JobStore(
    IngressStore,
    AssemblyStore,
    RoutingStore,
    RunnerStore,
    ExportStore,
    RetentionStore,
    AdminStore,
    ShadowSource,
    CorrectionSource,
    Protocol,
):
    """Durable state shared by all stages; they meet here, never call each other.

    Every port of :mod:`dicomnode.jobs.ports` at once, plus the verbs no stage
    uses but an engine provides. A stage depends on its own port, not on this.
    """

    def transition(
        self,
        job_id: int,
        target: JobState,
        reason: str | None = None,
        *,
        expected: JobState | None = None,
    ) -> Job:
        """Move a job to ``target``, recording the timestamped transition."""
        ...

    def instances(self, study_instance_uid: str) -> list[InstanceRecord]:
        """The instances of one study."""
        ...


if TYPE_CHECKING:

    def _meets_every_port(engine: SQLJobStore) -> JobStore:
        """Where mypy checks that the engine implements every port."""
        return engine
