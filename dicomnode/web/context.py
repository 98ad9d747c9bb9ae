"""What the web app is given by the wiring, and its sessions and CSRF checks."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from dicomnode.admin import Admin
from dicomnode.auth import Role, Session, UserStore
from dicomnode.config import Settings
from dicomnode.health import Health
from dicomnode.jobs import AuditEntry, AuditEvent
from dicomnode.web.models import PipelineOut

__all__ = [
    "CSRF_HEADER",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "ConsoleContext",
    "LoginRequired",
    "check_admin",
    "check_csrf",
]

SESSION_COOKIE = "dicomnode_session"
#: A login form's own CSRF token (double-submitted: cookie and form field).
LOGIN_COOKIE = "dicomnode_login"
CSRF_HEADER = "X-CSRF-Token"


class LoginRequired(Exception):
    """A page was asked for without a session: the answer is the login page."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(path)


@dataclass
class ConsoleContext:
    """Everything the console reads and does, handed in by the wiring.

    Attributes
    ----------
    settings : callable
        The configuration in force now (a reload replaces it).
    admin : callable
        The admin layer over the configuration in force and the job store:
        every read and every action of the console goes through it.
    users : UserStore
        Users and sessions.
    readiness : callable
        ``/readyz``'s report.
    exposition : callable
        ``/metrics``: ``Accept`` header to (body, content type).
    free_bytes : callable
        Free bytes on the spool's disk.
    pipelines : callable
        The routed pipelines: versions, models, device, warm or not.
    """

    settings: Callable[[], Settings]
    admin: Callable[[], Admin]
    users: UserStore
    readiness: Callable[[], Health]
    exposition: Callable[[str | None], tuple[bytes, str]]
    free_bytes: Callable[[], int]
    pipelines: Callable[[], list[PipelineOut]] = list

    @property
    def session_seconds(self) -> float:
        """How long a login lasts."""
        return self.settings().console.session_minutes * 60

    def session(self, request: Request) -> Session | None:
        """The request's live session, or ``None``."""
        token = request.cookies.get(SESSION_COOKIE)
        return self.users.session(token) if token else None

    def audit_login(self, name: str, ok: bool, address: str, why: str = "") -> None:
        """Append a console login (``ok``) or failed login (``why``: what was
        wrong, never the password tried) to the audit trail."""
        self.admin().record_login(name[:64], ok, address, why)

    def audit_logout(self, name: str, address: str) -> None:
        """Append a logout to the audit trail."""
        self.admin().store.record_audit(
            AuditEntry(AuditEvent.LOGIN, name, action="logout", target="console", address=address)
        )


def check_csrf(session: Session, token: str | None) -> None:
    """Refuse (403) a change whose CSRF token is not the session's."""
    if not token or not hmac.compare_digest(token, session.csrf_token):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")


def check_admin(session: Session) -> None:
    """Refuse (403) a change by a viewer."""
    if session.user.role is not Role.ADMIN:
        raise HTTPException(status_code=403, detail="viewers cannot change anything")
