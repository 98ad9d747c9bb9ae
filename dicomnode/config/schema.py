"""Pydantic models of the node's YAML file.

Every model forbids unknown keys, so a typo is an error that names the field
instead of a setting silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dicomnode.config.audit import AuditConfig
from dicomnode.config.console import ConsoleConfig
from dicomnode.config.destinations import Destination, ExportConfig
from dicomnode.config.executor import CeleryConfig
from dicomnode.config.metrics import MetricsConfig
from dicomnode.config.monitoring import MonitoringConfig
from dicomnode.config.nnunet import NnUNetSettings
from dicomnode.config.rules import Regex, RoutingConfig
from dicomnode.config.tls import ServerTLSConfig
from dicomnode.config.types import AETitle, IPAddress


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Model):
    """Who the node is on the network."""

    ae_title: AETitle = "DICOMNODE"
    bind: IPAddress = Field(
        default="127.0.0.1",
        description="Address to listen on; 0.0.0.0 listens on every interface.",
    )
    port: int = Field(default=11112, ge=1, le=65535)


class SenderConfig(_Model):
    """One peer allowed to open associations to the node."""

    ae_title: AETitle
    host: IPAddress | None = Field(
        default=None, description="When set, the association must also come from this address."
    )


class IngressConfig(_Model):
    """The DICOM listener (C-ECHO, C-STORE)."""

    allow_any: bool = Field(
        default=False, description="Accept associations from any calling AE title (not advised)."
    )
    allowed_senders: tuple[SenderConfig, ...] = ()
    called_ae_titles: tuple[AETitle, ...] = Field(
        default=(),
        description=(
            "The called AE titles the node answers to; empty: node.ae_title alone. An "
            "association to any other is rejected (A-ASSOCIATE-RJ, called AE title not "
            "recognized)."
        ),
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Receiving processes sharing the listening port (SO_REUSEPORT).",
    )
    max_pdu_size: int = Field(
        default=262144,
        ge=0,
        description=(
            "Largest P-DATA PDU the node advertises and accepts, in bytes; a larger one "
            "aborts the association. 0 advertises no limit and accepts P-DATA PDUs up to "
            "max_dataset_size plus 1 MiB."
        ),
    )
    poll_interval_ms: float = Field(
        default=0.2,
        gt=0,
        le=100,
        description=(
            "How long an open association's network loop sleeps when it has nothing to do, "
            "in milliseconds: lower answers sooner, higher costs less CPU while idle."
        ),
    )
    max_associations: int = Field(default=32, ge=1)
    max_connections_per_address: int = Field(
        default=8,
        ge=1,
        description=(
            "Connections one peer address may hold open at once, per receiving process; "
            "one more is closed as soon as it is accepted. Keep it below max_associations "
            "so that one host cannot take every slot."
        ),
    )
    listen_backlog: int = Field(
        default=128,
        ge=1,
        le=65535,
        description="Connections the kernel queues while the node accepts others (listen backlog).",
    )
    association_deadline: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds from a connection opening to its complete A-ASSOCIATE-RQ; "
            "a connection that has not sent one by then is closed."
        ),
    )
    max_dataset_size: int = Field(
        default=2 * 1024**3,
        ge=1,
        description=(
            "Largest dataset a C-STORE may carry, in bytes; a larger one is answered "
            "0xA700 (Out of Resources) and not kept."
        ),
    )
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    network_timeout: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Seconds an association may stay silent between messages, or stall inside one, "
            "before it is aborted."
        ),
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="How long SIGTERM waits for in-flight associations."
    )
    tls: ServerTLSConfig | None = Field(
        default=None,
        description=(
            "DICOM over TLS: on node.port only, or on a second port (tls.port) beside "
            "plain TCP on node.port; unset: plain TCP only."
        ),
    )

    @model_validator(mode="after")
    def _unique_senders(self) -> IngressConfig:
        seen: set[tuple[str, str | None]] = set()
        for sender in self.allowed_senders:
            key = (sender.ae_title, sender.host)
            if key in seen:
                raise ValueError(f"allowed_senders lists {sender.ae_title!r} twice")
            seen.add(key)
        return self


class StorageConfig(_Model):
    """Where the node keeps what it received. Relative paths are relative to
    the working directory the node starts in."""

    data_dir: Path = Path("var")
    spool_dir: Path | None = Field(
        default=None, description="Instance spool; default: <data_dir>/spool."
    )
    min_free_mb: int = Field(
        default=512,
        ge=0,
        description="Refuse instances (status 0xA700) when the spool's disk has less free space.",
    )
    retention_days: float | None = Field(
        default=7.0,
        gt=0,
        description=(
            "Purge a study's instances and results this many days after its last activity, "
            "once all its work is DONE, DISCARDED or DEAD; null keeps everything forever."
        ),
    )
    retention_check_seconds: float = Field(
        default=600.0, gt=0, description="How often the node looks for studies to purge."
    )

    @property
    def spool_path(self) -> Path:
        """The spool directory, defaulted from ``data_dir``."""
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

    @property
    def retention_seconds(self) -> float | None:
        """The retention period in seconds, or ``None`` when nothing is purged."""
        return None if self.retention_days is None else self.retention_days * 86400.0


class AssemblyConfig(_Model):
    """When a study counts as complete."""

    quiet_seconds: float = Field(
        default=30.0, gt=0, description="Complete a study this long after its last instance."
    )
    max_wait_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Complete a study at the latest this long after its first instance.",
    )
    poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often pending studies are checked."
    )

    @model_validator(mode="after")
    def _max_wait_not_below_quiet(self) -> AssemblyConfig:
        if self.max_wait_seconds < self.quiet_seconds:
            raise ValueError(
                f"max_wait_seconds ({self.max_wait_seconds}) must not be smaller than "
                f"quiet_seconds ({self.quiet_seconds})"
            )
        return self


class DatabaseConfig(_Model):
    """The job store: a SQLite file (the default) or a PostgreSQL database that
    several receiving processes and workers share."""

    url: str | None = Field(
        default=None,
        description=(
            "sqlite:///PATH, or postgresql+psycopg://USER@HOST:PORT/DATABASE (psycopg 3; "
            "keep the password out of this file: libpq reads it from ~/.pgpass or the file "
            "PGPASSFILE names); default: sqlite file dicomnode.db under data_dir."
        ),
    )

    @model_validator(mode="after")
    def _supported_scheme(self) -> DatabaseConfig:
        url = self.url
        if url is None:
            return self
        if url.startswith("sqlite:///"):
            if url == "sqlite:///":
                raise ValueError("sqlite:/// needs a file path")
            return self
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("postgresql", "postgresql+psycopg", "postgres"):
            raise ValueError(
                "url: sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DATABASE "
                f"(got the scheme {scheme or 'none'!r})"
            )
        rest = url.split("://", 1)[1]
        if "/" not in rest or not rest.rsplit("/", 1)[1].split("?", 1)[0]:
            raise ValueError("url: a PostgreSQL URL must name the database (…/DATABASE)")
        return self

    @property
    def is_sqlite(self) -> bool:
        """Whether the store is a SQLite file."""
        return self.url is None or self.url.startswith("sqlite:///")


class LoggingConfig(_Model):
    """Console logging of ``serve``."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = Field(
        default="text",
        description="text: one escaped line per record; json: one JSON object per line.",
    )


class PipelineSettings(_Model):
    """Per-pipeline runner settings."""

    timeout_seconds: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1)
    bundle: Path | None = Field(
        default=None, description="For monai-bundle: the MONAI bundle folder to run."
    )
    nnunet: NnUNetSettings | None = Field(
        default=None, description="For nnunet: the trained-model folder's manifest and options."
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description=(
            "For torchscript and onnx: the model manifest's name "
            "(<runner.models_dir>/<model>.yaml), whose files hold the network and its model card."
        ),
    )
    inputs: dict[str, Regex] | None = Field(
        default=None,
        description=(
            "For monai-bundle with several input series: role to a regex of the role's "
            "SeriesDescription, in the order of the bundle's input channels."
        ),
    )
    score_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "For monai-bundle with a detection bundle: the score from which a box is "
            "reported (default: the bundle's box selector score_thresh)."
        ),
    )
    labels: dict[int, Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        description=(
            "For monai-bundle with a detection bundle: class index to name, over the "
            "bundle's channel_def (each class is coded locally)."
        ),
    )


class RunnerConfig(_Model):
    """Where and how pipelines run."""

    enabled: bool = Field(
        default=True,
        description="Run pipelines in this node; when false, routed runs wait in ROUTED.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.",
    )
    workers: int = Field(
        default=1, ge=1, le=16, description="Worker processes, each running one job at a time."
    )
    timeout_seconds: float = Field(default=900.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_seconds: float = Field(default=30.0, ge=0)
    poll_seconds: float = Field(default=0.5, gt=0, le=60)
    threads: int = Field(default=0, ge=0, description="torch threads per worker; 0 = automatic.")
    read_ahead: bool = Field(
        default=True,
        description="An idle worker reads a study's volumes during its quiet period (local "
        "executor), so its run does not wait for that.",
    )
    models_dir: Path = Field(
        default=Path("models"), description="Where model manifests (*.yaml) are looked up."
    )
    plugins: tuple[str, ...] = Field(
        default=(),
        description="Extra pipelines as 'module:attribute', besides installed entry points.",
    )
    pipelines: dict[str, PipelineSettings] = Field(default_factory=dict)
    executor: Literal["local", "celery"] = Field(
        default="local",
        description=(
            "local: worker processes of this node; celery: Celery workers (dicomnode worker) "
            "on the broker of runner.celery, one queue per pipeline."
        ),
    )
    celery: CeleryConfig | None = Field(default=None, validate_default=True)

    @field_validator("celery")
    @classmethod
    def _celery_needs_a_broker(
        cls, value: CeleryConfig | None, info: ValidationInfo
    ) -> CeleryConfig | None:
        if value is None and info.data.get("executor") == "celery":
            raise ValueError("required with executor celery (broker: redis://HOST:6379/0)")
        return value


class Settings(_Model):
    """The whole node configuration (one YAML file)."""

    node: NodeConfig = NodeConfig()
    ingress: IngressConfig = IngressConfig()
    storage: StorageConfig = StorageConfig()
    assembly: AssemblyConfig = AssemblyConfig()
    database: DatabaseConfig = DatabaseConfig()
    logging: LoggingConfig = LoggingConfig()
    routing: RoutingConfig = RoutingConfig()
    runner: RunnerConfig = RunnerConfig()
    audit: AuditConfig = AuditConfig()
    destinations: dict[str, Destination] = Field(default_factory=dict)
    export: ExportConfig = ExportConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        # A section with only comments under it is null in YAML: use its defaults.
        if isinstance(data, dict):
            return {key: ({} if value is None else value) for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _tls_port_is_another(self) -> Settings:
        tls = self.ingress.tls
        if tls is not None and tls.port == self.node.port:
            raise ValueError(
                f"ingress.tls.port: {tls.port} is node.port; leave tls.port unset to "
                "speak TLS on node.port only, or give another port"
            )
        return self

    @property
    def database_path(self) -> Path:
        """Path of the SQLite job store file (with PostgreSQL: where it would be)."""
        if self.database.url is None or not self.database.is_sqlite:
            return self.storage.data_dir / "dicomnode.db"
        return Path(self.database.url.removeprefix("sqlite:///"))

    @property
    def database_url(self) -> str:
        """What the job store opens: the SQLite file's path, or the PostgreSQL URL."""
        if self.database.is_sqlite:
            return str(self.database_path)
        assert self.database.url is not None
        return self.database.url

    @property
    def users_db_path(self) -> Path:
        """Path of the console's users file."""
        if self.console.users_db is None:
            return self.storage.data_dir / "console.db"
        return self.console.users_db

    def reference_problems(self) -> list[str]:
        """Rules whose ``destinations`` / ``notify`` name no (or the wrong kind
        of) destination, one line each with its field path."""
        problems: list[str] = []
        rules = [(f"routing.rules.{i}", r) for i, r in enumerate(self.routing.rules)]
        if self.routing.fallback is not None:
            rules.append(("routing.fallback", self.routing.fallback))
        for path, rule in rules:
            for index, name in enumerate(rule.destinations):
                found = self.destinations.get(name)
                if found is None:
                    problems.append(f"{path}.destinations.{index}: no destination {name!r}")
                elif found.type == "hl7":
                    problems.append(
                        f"{path}.destinations.{index}: {name!r} is an hl7 destination; "
                        "list it under notify"
                    )
            for index, name in enumerate(rule.notify):
                found = self.destinations.get(name)
                if found is None:
                    problems.append(f"{path}.notify.{index}: no destination {name!r}")
                elif found.type != "hl7":
                    problems.append(
                        f"{path}.notify.{index}: {name!r} is a {found.type} destination; "
                        "notify takes hl7 destinations"
                    )
        return problems

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what the admin meant."""
        found: list[str] = []
        if not self.ingress.allow_any and not self.ingress.allowed_senders:
            found.append(
                "ingress.allowed_senders: empty and allow_any is false, so every "
                "association will be rejected"
            )
        if self.ingress.allow_any:
            found.append("ingress.allow_any: true accepts associations from any AE title")
        return found
