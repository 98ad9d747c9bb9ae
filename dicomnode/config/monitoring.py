"""The ``monitoring`` section: drift checks of each pipeline's inputs and outputs."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MonitoringConfig(BaseModel):
    """How the node compares a pipeline's recent runs with its reference runs.

    The reference window is the pipeline's first ``reference_runs`` runs, or
    the runs between ``reference_from`` and ``reference_to`` when those are
    given; the recent window is the last ``recent_runs`` runs, or the runs of
    the last ``recent_days`` days, never counting a reference run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Record descriptors and check for drift.")
    check_seconds: float = Field(default=3600.0, gt=0, description="Between two drift checks.")
    recent_runs: int | None = Field(
        default=None, ge=1, description="The recent window in runs (50 when neither is given)."
    )
    recent_days: float | None = Field(default=None, gt=0, description="The recent window in days.")
    reference_runs: int = Field(default=50, ge=1)
    reference_from: datetime | None = None
    reference_to: datetime | None = None
    min_runs: int = Field(
        default=20, ge=2, description="Fewer runs than this in either window: no comparison."
    )
    psi_threshold: float = Field(default=0.2, gt=0)
    ks_p_threshold: float = Field(default=0.01, gt=0, lt=1)
    webhook_url: str | None = Field(
        default=None, pattern=r"^https?://", description="POSTed a JSON alert when set."
    )
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often finished shadow runs are compared with their production runs "
        "and received corrections are scored.",
    )

    @model_validator(mode="after")
    def _windows(self) -> MonitoringConfig:
        if self.recent_days is not None and self.recent_runs is not None:
            raise ValueError("monitoring.recent_days: give recent_days or recent_runs, not both")
        if (self.reference_from is None) != (self.reference_to is None):
            raise ValueError(
                "monitoring.reference_from: give both reference_from and reference_to, or neither"
            )
        if (
            self.reference_from is not None
            and self.reference_to is not None
            and self.reference_from >= self.reference_to
        ):
            raise ValueError("monitoring.reference_to: must be later than reference_from")
        return self

    @property
    def recent_window_runs(self) -> int | None:
        """The recent window's size in runs; ``None`` when it is ``recent_days``."""
        if self.recent_days is not None:
            return None
        return self.recent_runs if self.recent_runs is not None else 50
