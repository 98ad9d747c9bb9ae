"""The export stage: deliver each run's outbox to its destinations.

RESULTS_WRITTEN runs move to EXPORTING. Their PENDING outbox rows are grouped
by (run, destination) and each group is delivered as one: all of a study's
objects to one PACS go over one association, and a failed group is retried as
one (one retry per study, never one per file), with exponential backoff and
jitter, up to ``export.max_attempts``; then its rows are DEAD with the reason.
A permanent refusal (e.g. SOP class not supported) is DEAD at once. When no row
of a run is PENDING any more the run is DONE (all delivered) or DEAD.

What a row delivers was recorded when the results were written: an object's
file and UIDs, a notification's whole message. Nothing here builds or re-reads
result content. A notification that names objects (the ORU names the SR and
the SEG) waits, when the run's rule says ``notify_after: delivered`` (the
default), until those objects reached every DICOM destination of the run; if
one of them ends DEAD, the notification ends DEAD too, unsent, with the reason,
so the RIS never hears of an object the PACS lacks. ``dicomnode jobs retry``
then replays both.

Before anything of a run leaves the node, the patient safety gate checks that
Patient ID, Patient Name and Study Instance UID agree across all its inputs;
a conflict holds the run (DEAD, with the reason) instead of sending a result
that may belong to another patient.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import ssl
import time
from collections.abc import Callable
from itertools import groupby
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.config.destinations import (
    DicomDestination,
    ExportConfig,
    FolderDestination,
    HL7Destination,
)
from dicomnode.config.schema import Settings
from dicomnode.errors import ExportError, HL7Error, HL7NackError, JobStoreError, SendError
from dicomnode.export.hl7 import deliver
from dicomnode.export.storescu import (
    FailureKind,
    SendFailure,
    SendReport,
    StatusCategory,
    collect_files,
    send_files,
    status_category,
)
from dicomnode.jobs.audit import AuditEntry, AuditEvent
from dicomnode.jobs.models import OutboxItem, Run
from dicomnode.jobs.ports import ExportStore
from dicomnode.metrics import ExportMetrics
from dicomnode.scheduling import Loop, Wakeup

LOGGER = logging.getLogger(__name__)

#: C-STORE failure statuses that retrying cannot fix: SOP class not supported,
#: not authorized, unrecognized operation, and data set does not match SOP class.
PERMANENT_STATUSES = frozenset({0x0122, 0x0124, 0x0211, *range(0xA900, 0xAA00)})


def permanent(failure: SendFailure) -> bool:
    """Whether sending the file again to the same peer cannot succeed.

    A failure status is permanent when it is one of :data:`PERMANENT_STATUSES`;
    other failures (out of resources, processing failure, cannot understand),
    statuses of no known category and a missing answer are worth a retry. A
    file the peer accepted no presentation context for is permanent: the
    same proposal gets the same answer.
    """
    if failure.status is None:
        return failure.kind is FailureKind.NOT_ACCEPTED
    category = status_category(failure.status)
    return category is StatusCategory.FAILURE and failure.status in PERMANENT_STATUSES


def _tls_args(
    target: DicomDestination | HL7Destination, host: str
) -> tuple[ssl.SSLContext, str] | None:
    """The TLS context and expected peer name of a destination, or ``None`` (plain TCP).

    Raises
    ------
    SendError
        Its TLS files cannot be loaded any more (changed since the config was read).
    """
    if target.tls is None:
        return None
    try:
        return target.tls.context(), target.tls.hostname_for(host)
    except ValueError as exc:
        raise SendError(f"tls: {exc}") from exc


class Delivery:
    """The outcome of delivering one group."""

    def __init__(
        self,
        delivered: list[int],
        retry: list[int],
        dead: list[int],
        error: str,
        acks: list[str] | None = None,
    ):
        self.delivered = delivered
        self.retry = retry
        self.dead = dead
        self.error = error
        self.acks = acks or []
        """The HL7 ACK codes (MSA-1) the receiver answered with."""


def patient_conflict(files: list[str]) -> str | None:
    """Why the inputs cannot be trusted to be one patient's study, or ``None``."""
    seen: dict[str, set[str]] = {
        "PatientID": set(),
        "PatientName": set(),
        "StudyInstanceUID": set(),
    }
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=list(seen))
        except (InvalidDicomError, OSError) as exc:
            return f"an input cannot be read ({exc})"
        for keyword, values in seen.items():
            values.add(str(ds.get(keyword, "")).strip())
    differing = [keyword for keyword, values in seen.items() if len(values) > 1]
    if differing:
        return (
            "held by the patient safety gate: "
            + ", ".join(differing)
            + " differ across the run's inputs"
        )
    return None


class Dispatcher:
    """Delivers outbox rows, in its own thread.

    Parameters
    ----------
    settings : Settings
        Destinations, export retries, the node's AE title.
    store : ExportStore
        The job store.
    clock : callable
        Seconds since the epoch.
    metrics : ExportMetrics, optional
        Counts attempts, failures and HL7 ACK codes per destination.
    """

    def __init__(
        self,
        settings: Settings,
        store: ExportStore,
        clock: Callable[[], float] = time.time,
        *,
        metrics: ExportMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.config: ExportConfig = settings.export
        self.store = store
        self.clock = clock
        # the poll interval is read before every wait: a reload may change it
        self._loop = Loop(
            "dicomnode-export", self._pass, lambda: self.config.poll_seconds, self._failed
        )
        self._checked: set[int] = set()

    # -- scheduling -------------------------------------------------------

    def delay(self, attempts: int) -> float:
        """Backoff before attempt ``attempts + 1``, with jitter."""
        base = min(
            self.config.max_backoff_seconds,
            self.config.backoff_seconds * 2.0 ** max(0, attempts),
        )
        spread = random.uniform(-self.config.jitter, self.config.jitter)  # noqa: S311
        return float(max(0.0, base * (1.0 + spread)))

    def tick(self) -> bool:
        """Start new exports, deliver what is due, settle finished runs; return
        whether anything was delivered (a notification waiting for those
        objects may be due now)."""
        delivered = False
        self.store.start_exports()
        now = self.clock()
        due = self.store.due_deliveries(now)
        held: set[int] = set()
        for (job_id, destination), group in groupby(due, key=lambda i: (i.job_id, i.destination)):
            items = list(group)
            if job_id in held:
                continue  # nothing of a held run leaves the node, to any destination
            if job_id not in self._checked and self._gate(job_id):
                held.add(job_id)
                continue
            if items[0].kind == "notification" and self._waiting(job_id, destination, items):
                continue
            delivered = self._deliver(job_id, destination, items) or delivered
        for job in self.store.settle_exports():
            LOGGER.info(
                "job %d: export %s (%s)",
                job.id,
                job.state,
                job.reason,
                extra={"study_uid": job.study_instance_uid, "job_id": job.id},
            )
        return delivered

    def _gate(self, job_id: int) -> bool:
        """Run the patient safety gate once per run; True when it held the run."""
        job = self.store.get_run(job_id)
        files = self._input_files(job)
        conflict = patient_conflict(files) if files else None
        self._checked.add(job_id)
        if conflict is None:
            return False
        self.store.hold(job_id, conflict)
        LOGGER.error("job %d: %s", job_id, conflict, extra={"job_id": job_id})
        return True

    def _waiting(self, job_id: int, destination: str, items: list[OutboxItem]) -> bool:
        """Whether notifications must not be sent yet: under ``notify_after:
        delivered`` an object they name is still PENDING to one of the run's
        DICOM destinations. When such an object ended DEAD instead, the
        notifications end DEAD (unsent, no attempt counted) and so are not sent
        either."""
        if self.store.get_run(job_id).notify_after != "delivered":
            return False
        named = {uid for item in items for uid in item.refers_to}
        objects = [
            row
            for row in self.store.outbox(job_id)
            if row.kind == "dicom" and row.sop_instance_uid in named
        ]
        if any(row.state == "PENDING" for row in objects):
            return True
        dead = sorted(
            {f"{row.destination}: {row.last_error}" for row in objects if row.state == "DEAD"}
        )
        if not dead:
            return False
        error = "not sent: the objects it names did not reach " + "; ".join(dead)
        self.store.record_delivery([i.id for i in items], "DEAD", error, attempted=False)
        LOGGER.warning(
            "job %d → %s: notification held back: %s",
            job_id,
            destination,
            error,
            extra={"job_id": job_id},
        )
        return True

    def _input_files(self, job: Run) -> list[str]:
        return [
            r.path
            for r in self.store.instances_of(job.parent_id)
            if r.series_instance_uid == job.series_instance_uid
        ]

    # -- delivery ---------------------------------------------------------

    def _deliver(self, job_id: int, destination: str, items: list[OutboxItem]) -> bool:
        target = self.settings.destinations.get(destination)
        ids = [i.id for i in items]
        try:
            if target is None:
                outcome = Delivery([], [], ids, f"no destination {destination!r} is configured")
            elif isinstance(target, FolderDestination):
                outcome = self._to_folder(target, items)
            elif isinstance(target, DicomDestination):
                outcome = self._to_dicom(target, items)
            else:
                outcome = self._to_hl7(target, items, destination)
        except (OSError, ExportError) as exc:
            outcome = Delivery([], ids, [], f"{type(exc).__name__}: {exc}")
        attempts = max(i.attempts for i in items) + 1
        if self.metrics is not None:
            self.metrics.attempted(
                destination, len(outcome.delivered), len(outcome.retry), len(outcome.dead)
            )
        if outcome.delivered:
            self.store.record_delivery(outcome.delivered, "DELIVERED")
        if outcome.dead:
            self.store.record_delivery(outcome.dead, "DEAD", outcome.error)
        if outcome.retry:
            if attempts >= self.config.max_attempts:
                error = f"{outcome.error} (gave up after {attempts} attempts)"
                self.store.record_delivery(outcome.retry, "DEAD", error)
            else:
                next_at = self.clock() + self.delay(attempts - 1)
                self.store.record_delivery(outcome.retry, "PENDING", outcome.error, next_at)
        self._audit(job_id, destination, target, items, outcome, attempts)
        extra = {"job_id": job_id}
        if outcome.retry or outcome.dead:
            LOGGER.warning(
                "job %d → %s: attempt %d failed: %s",
                job_id,
                destination,
                attempts,
                outcome.error,
                extra=extra,
            )
        else:
            LOGGER.info(
                "job %d → %s: %d item(s) delivered", job_id, destination, len(ids), extra=extra
            )
        return bool(outcome.delivered)

    def _audit(
        self,
        job_id: int,
        destination: str,
        target: object,
        items: list[OutboxItem],
        outcome: Delivery,
        attempts: int,
    ) -> None:
        """One audit row per attempt to deliver a run's items to a destination."""
        delivered = set(outcome.delivered)
        try:
            study = self.store.get_job(job_id).study_instance_uid
        except JobStoreError:
            study = None
        hl7 = isinstance(target, HL7Destination)
        detail: dict[str, object] = {
            "attempt": attempts,
            "delivered": [i.sop_instance_uid or i.path for i in items if i.id in delivered]
            if not hl7
            else len(outcome.delivered),
            "failed": len(outcome.retry) + len(outcome.dead),
        }
        if hl7:
            detail["ack"] = outcome.acks
        else:
            detail["sop_instance_uids"] = [i.sop_instance_uid for i in items]
        if outcome.error:
            detail["error"] = outcome.error
        if not outcome.retry and not outcome.dead:
            result = "success"
        elif outcome.delivered:
            result = "partial"
        else:
            result = "failure"
        try:
            self.store.record_audit(
                AuditEntry(
                    AuditEvent.HL7_SENT if hl7 else AuditEvent.RESULTS_SENT,
                    "node",
                    action="ORU^R01" if hl7 else getattr(target, "type", "unknown"),
                    target=destination,
                    outcome=result,
                    study_instance_uid=study,
                    detail=detail,
                )
            )
        except JobStoreError as exc:
            LOGGER.error("job %d: could not write the audit row of a delivery: %s", job_id, exc)

    @staticmethod
    def _to_folder(target: FolderDestination, items: list[OutboxItem]) -> Delivery:
        for item in items:
            source = Path(item.path)
            study, series = item.study_instance_uid, item.series_instance_uid
            if study is None or series is None:  # a row queued before schema version 4
                ds = dcmread(
                    source,
                    stop_before_pixels=True,
                    specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
                )
                study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            folder = target.path / study / series
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{source.name}.part"
            shutil.copyfile(source, partial)
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, folder / source.name)
        return Delivery([i.id for i in items], [], [], "")

    def _to_dicom(self, target: DicomDestination, items: list[OutboxItem]) -> Delivery:
        report = SendReport()
        files = collect_files([Path(i.path) for i in items], report)
        by_path = {i.path: i.id for i in items}
        dead = [by_path[str(p)] for p, _ in report.skipped]
        calling = target.calling_ae_title or self.settings.node.ae_title
        try:
            send_files(
                files,
                target.host,
                target.port,
                target.ae_title,
                calling,
                report=report,
                timeout=target.timeout_seconds,
                tls=_tls_args(target, target.host),
            )
        except SendError as exc:
            # more than one association (over 128 contexts): keep what got through
            got_through = [by_path[str(p)] for p in report.sent]
            settled = set(got_through) | set(dead)
            again = [i.id for i in items if i.id not in settled]
            return Delivery(got_through, again, dead, str(exc))
        delivered = [by_path[str(p)] for p in report.sent]
        retry: list[int] = []
        errors = []
        for failure in report.failed:
            errors.append(failure.reason)
            (dead if permanent(failure) else retry).append(by_path[str(failure.path)])
        return Delivery(delivered, retry, dead, "; ".join(sorted(set(errors))))

    def _to_hl7(self, target: HL7Destination, items: list[OutboxItem], name: str) -> Delivery:
        """Send each notification's message as it was built when the results
        were written: a retry sends the very same message (same MSH-10)."""
        delivered: list[int] = []
        retry: list[int] = []
        dead: list[int] = []
        errors: list[str] = []
        acks: list[str] = []
        for item in items:
            if item.body is None:
                errors.append(
                    "no message was built for this notification (queued by a release before "
                    "typed outbox rows, or the destination was not an hl7 destination when "
                    "the results were written); `dicomnode jobs retry` runs the pipeline again"
                )
                dead.append(item.id)
                continue
            try:
                ack = deliver(
                    item.body,
                    target.host,
                    target.port,
                    timeout=target.timeout_seconds,
                    tls=_tls_args(target, target.host),
                )
            except HL7Error as exc:
                if isinstance(exc, HL7NackError):
                    acks.append(exc.code)
                    if self.metrics is not None:
                        self.metrics.ack(name, exc.code)
                errors.append(str(exc))
                (dead if exc.permanent else retry).append(item.id)
            except OSError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                retry.append(item.id)
            else:
                acks.append(ack.code)
                if self.metrics is not None:
                    self.metrics.ack(name, ack.code)
                delivered.append(item.id)
        return Delivery(delivered, retry, dead, "; ".join(errors), acks)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Deliver in a background thread: when woken (:attr:`wakeup`), at
        least every ``export.poll_seconds``."""
        self._loop.start()

    @property
    def wakeup(self) -> Wakeup:
        """Set it when a run's results were written (the wiring does, on the
        job store's commits): their export starts at once, not at the next poll."""
        return self._loop.wakeup

    def _pass(self) -> float | None:
        # a delivery may have made a notification due: look again at once
        return 0.0 if self.tick() else None

    @staticmethod
    def _failed(exc: Exception) -> None:
        if isinstance(exc, JobStoreError):
            LOGGER.error("export: job store error, retrying: %s", exc)
            return
        # The thread boundary: an unforeseen error in one delivery (a bug, a
        # malformed object) must not stop every later export silently. It is
        # logged with its traceback; the rows stay PENDING and are tried again.
        LOGGER.error("export: unexpected error; the next poll tries again", exc_info=exc)

    def alive(self) -> bool:
        """Whether the delivery thread runs."""
        return self._loop.alive()

    def stop(self) -> None:
        """Stop after the delivery in progress."""
        self._loop.stop()
