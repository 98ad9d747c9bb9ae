"""Where results go: destinations chosen by their ``type``, and delivery retries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dicomnode.config.tls import ClientTLSConfig
from dicomnode.config.types import AETitle


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomDestination(_Model):
    """A DICOM peer (the PACS) that receives the result objects by C-STORE."""

    type: Literal["dicom"]
    ae_title: str = Field(
        min_length=1, max_length=16, pattern=r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$"
    )
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AETitle | None = Field(
        default=None, description="Our AE title towards it; default node.ae_title."
    )
    timeout_seconds: float = Field(default=30.0, gt=0)
    tls: ClientTLSConfig | None = Field(
        default=None, description="DICOM over TLS to this peer; unset: plain TCP."
    )


class HL7Destination(_Model):
    """A RIS/EHR that receives ORU^R01 messages over MLLP."""

    type: Literal["hl7"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    sending_application: str = "DICOMNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    version: Literal["2.5.1"] = "2.5.1"
    timeout_seconds: float = Field(default=30.0, gt=0, description="Hard deadline for the ACK.")
    tls: ClientTLSConfig | None = Field(
        default=None, description="MLLP over TLS to this receiver; unset: plain TCP."
    )


class FolderDestination(_Model):
    """A directory: objects land in ``<path>/<StudyUID>/<SeriesUID>/``."""

    type: Literal["folder"]
    path: Path


Destination = Annotated[
    DicomDestination | HL7Destination | FolderDestination, Field(discriminator="type")
]


class ExportConfig(_Model):
    """Retries of deliveries: exponential backoff with jitter, bounded."""

    max_attempts: int = Field(default=10, ge=1, le=100)
    backoff_seconds: float = Field(default=30.0, ge=0)
    max_backoff_seconds: float = Field(default=3600.0, ge=0)
    jitter: float = Field(default=0.2, ge=0, le=1, description="± this fraction of each delay.")
    poll_seconds: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _max_not_below_start(self) -> ExportConfig:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError("max_backoff_seconds must not be smaller than backoff_seconds")
        return self
