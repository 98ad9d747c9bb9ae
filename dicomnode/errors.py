"""The exception hierarchy of dicomnode.

Every error the node raises on purpose derives from :class:`DicomNodeError`.
Exceptions become DIMSE status codes or HL7 ACK codes only at the protocol
boundary (``dicomnode.ingress``, ``dicomnode.export``).

::

    DicomNodeError
    ├── ConfigError              the YAML file is missing, unreadable or invalid
    ├── StartupError             the node cannot start (port in use, data dir unwritable)
    ├── SpoolError               the on-disk instance store
    │   ├── InvalidUIDError      a UID that is not digits and dots, <= 64 chars
    │   └── SpoolWriteError      a write that failed (disk full, permissions)
    ├── DatasetError             a received dataset we cannot use
    │   └── IncompleteDatasetError   it ends early or a length points past its end
    ├── VolumeError              a series cannot become a correct volume; the message says why
    ├── ResultError              result objects cannot be made from this input (permanent)
    ├── JobStoreError            the durable job store
    │   ├── IllegalTransitionError
    │   │   ├── PurgedError      the job's files were removed by retention
    │   │   └── LeaseLostError   a run's outcome from one that no longer holds the run
    │   └── NotFoundError
    ├── ExportError              delivery to a peer
    │   ├── SendError            association refused or peer unreachable
    │   └── HL7Error             an HL7 message could not be delivered (.permanent)
    │       ├── HL7NackError         the RIS answered AE/CE (permanent) or AR/CR, wrong MSA-2
    │       ├── HL7TimeoutError      no ACK before the deadline (retryable)
    │       └── HL7ConnectionError   refused, reset or closed without an ACK (retryable)
    ├── RunnerError              running a pipeline
    │   ├── PipelineNotFoundError    no installed pipeline has that name
    │   ├── DuplicatePipelineError   two plugins claim one name
    │   ├── ModelError               a manifest or weights file is missing or wrong
    │   └── InputError               the input is not what the pipeline accepts
    └── AuthError                console users and logins
        ├── UserError                a user name, role or password that cannot be used
        └── LoginError               a login refused (wrong password, unknown user, locked out)
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Root of every error raised by dicomnode on purpose."""


class ConfigError(DicomNodeError):
    """The configuration file is missing, unreadable or invalid.

    Parameters
    ----------
    message : str
        A summary line.
    problems : list of str, optional
        One line per problem, each starting with the field path.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        text = message if not self.problems else message + "\n" + "\n".join(self.problems)
        super().__init__(text)


class StartupError(DicomNodeError):
    """The node could not start; the message says what the admin must fix."""


class SpoolError(DicomNodeError):
    """Something went wrong in the on-disk instance store."""


class InvalidUIDError(SpoolError, ValueError):
    """A UID is missing, too long or contains characters other than digits and dots."""


class SpoolWriteError(SpoolError, OSError):
    """Writing an instance to the spool failed; nothing was left behind."""


class DatasetError(DicomNodeError):
    """A received dataset cannot be decoded or lacks what the node needs."""


class IncompleteDatasetError(DatasetError):
    """A received dataset ends early, or an element's length points past its end."""


class VolumeError(DicomNodeError):
    """A series cannot become a correct volume; the message says why.

    Raised when loading a series for a pipeline: files of several series,
    mixed orientations or sizes, duplicate or missing slices, colour images,
    pixel data that cannot be decoded.
    """


class ResultError(DicomNodeError):
    """The result writer cannot make objects from this input, and never will.

    Raised before anything is written when the source instances lack what the
    objects need (a Frame of Reference UID for a segmentation of a CT, one
    geometry shared by all slices) or when highdicom refuses the inputs. The
    run ends DEAD at once with this message: the writer is a pure function of
    the result and the source headers, so retrying cannot help.
    """


class JobStoreError(DicomNodeError):
    """The job store refused an operation."""


class IllegalTransitionError(JobStoreError):
    """A job was asked to move between two states that DESIGN.md does not connect."""


class PurgedError(IllegalTransitionError):
    """The job's instances and results were removed by retention
    (``storage.retention_days``), so it cannot be retried or replayed."""


class LeaseLostError(IllegalTransitionError):
    """An outcome of a run came from one that does not hold the run (any more):
    its lease expired and the run was reclaimed, or the run already recorded
    an outcome. Nothing was recorded; the holder's outcome counts."""


class NotFoundError(JobStoreError, LookupError):
    """No job or study with the given identifier."""


class ExportError(DicomNodeError):
    """Delivering to a peer failed."""


class SendError(ExportError):
    """The peer could not be reached, or refused the association."""


class HL7Error(ExportError):
    """Delivering an HL7 v2 message failed.

    Parameters
    ----------
    message : str
        What went wrong.
    permanent : bool
        ``True`` when re-sending the same message cannot help (the job goes
        DEAD at once); ``False`` when a retry with the same MSH-10 may succeed.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class HL7NackError(HL7Error):
    """The receiver did not accept the message.

    ``AE``/``CE`` (application/commit error) are permanent; ``AR``/``CR``
    (reject), an unknown code or an ACK for another control ID are retryable.

    Attributes
    ----------
    code : str
        MSA-1 of the ACK (``""`` when it had none).
    control_id : str
        MSA-2 of the ACK: the control ID the receiver acknowledged.
    reason : str
        MSA-3 or the ERR segment's text, unescaped (may be empty).
    """

    def __init__(
        self, message: str, *, code: str, control_id: str, reason: str, permanent: bool
    ) -> None:
        super().__init__(message, permanent=permanent)
        self.code = code
        self.control_id = control_id
        self.reason = reason


class HL7TimeoutError(HL7Error, TimeoutError):
    """No complete ACK arrived before the deadline; retryable."""


class HL7ConnectionError(HL7Error, ConnectionError):
    """The receiver could not be reached, or closed the connection without an
    ACK; retryable."""


class RunnerError(DicomNodeError):
    """Running a pipeline failed for a reason the runner can name."""


class PipelineNotFoundError(RunnerError, LookupError):
    """No installed pipeline has the requested name."""


class DuplicatePipelineError(RunnerError):
    """Two plugins declare the same pipeline name; neither is guessed."""


class ModelError(RunnerError):
    """A model manifest is invalid, or its weights file is missing or does not
    match the manifest's SHA-256. The message names the model."""


class InputError(RunnerError):
    """The input series is not what the pipeline accepts (modality, size...)."""


class AuthError(DicomNodeError):
    """Console users and logins."""


class UserError(AuthError, ValueError):
    """A user name, role or password that cannot be used; the message says which."""


class LoginError(AuthError):
    """A login refused. The message is the same for an unknown user and a
    wrong password; :attr:`locked` says whether the user is locked out."""

    def __init__(self, message: str, *, locked: bool = False) -> None:
        self.locked = locked
        super().__init__(message)
