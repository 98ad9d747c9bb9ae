"""Console users: argon2 password hashes, roles, lockout and sessions in SQLite.

There are no default credentials: the first user is made with ``dicomnode
users add NAME --role admin``. Two roles: ``admin`` changes things (retry,
replay, rules, reload), ``viewer`` only reads.

A login that fails counts against the user; after
``console.max_failed_logins`` failures in a row the user is locked out for
``console.lockout_minutes``, the right password included. An unknown user and
a wrong password get the same answer (and cost the same argon2 verification).

Sessions are random tokens; the file keeps only their SHA-256, so a copy of
it opens no session. Each session has its own CSRF token, which every form
and every changing API call must send back.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dicomnode.errors import LoginError, UserError

__all__ = ["MIN_PASSWORD", "Role", "Session", "User", "UserStore"]

#: Shortest password accepted, in characters.
MIN_PASSWORD = 12
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


class Role(StrEnum):
    """What a user may do."""

    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True)
class User:
    """A console user (never the hash)."""

    name: str
    role: Role
    created_at: float
    failed_logins: int
    locked_until: float | None

    def locked(self, now: float) -> bool:
        """Whether the user is locked out at ``now``."""
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class Session:
    """A logged-in user's session."""

    user: User
    csrf_token: str
    expires_at: float


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UserStore:
    """The users file (``console.users_db``).

    Parameters
    ----------
    path : Path
        The SQLite file; made (with its folder) when missing.
    max_failed : int
        Failed logins in a row that lock a user out.
    lockout_seconds : float
        How long a lockout lasts.
    """

    def __init__(self, path: Path, *, max_failed: int = 5, lockout_seconds: float = 900) -> None:
        self.path = path
        self.max_failed = max_failed
        self.lockout_seconds = lockout_seconds
        self._hasher = PasswordHasher()
        # verified against when the user does not exist, so that costs the same
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            with db:
                yield db

    # -- users -----------------------------------------------------------

    def add(self, name: str, role: Role | str, password: str) -> User:
        """Add a user.

        Raises
        ------
        UserError
            The name is not a plain login name, the role is unknown, the
            password is shorter than :data:`MIN_PASSWORD`, or the user exists.
        """
        if not _NAME.fullmatch(name):
            raise UserError(
                "name: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                "or digit"
            )
        try:
            chosen = Role(role)
        except ValueError as exc:
            raise UserError(f"role: {role!r} is not one of admin, viewer") from exc
        if len(password) < MIN_PASSWORD:
            raise UserError(f"password: at least {MIN_PASSWORD} characters")
        now = time.time()
        try:
            with self._db() as db:
                db.execute(
                    "INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                    (name, str(chosen), self._hasher.hash(password), now),
                )
        except sqlite3.IntegrityError as exc:
            raise UserError(f"name: a user {name!r} exists already") from exc
        return User(name, chosen, now, 0, None)

    def remove(self, name: str) -> None:
        """Remove a user and end their sessions.

        Raises
        ------
        UserError
            No such user.
        """
        with self._db() as db:
            removed = db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount
        if not removed:
            raise UserError(f"name: no user {name!r}")

    def users(self) -> list[User]:
        """Every user, by name."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM users ORDER BY name").fetchall()
        return [self._user(row) for row in rows]

    def count(self) -> int:
        """How many users exist."""
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(
            name=row["name"],
            role=Role(row["role"]),
            created_at=row["created_at"],
            failed_logins=row["failed_logins"],
            locked_until=row["locked_until"],
        )

    # -- logins and sessions ---------------------------------------------

    def authenticate(self, name: str, password: str, now: float | None = None) -> User:
        """Check a password; count a failure, lock out after too many.

        Raises
        ------
        LoginError
            Unknown user, wrong password, or locked out (``locked``).
        """
        now = time.time() if now is None else now
        with self._db() as db:
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            self._verify(self._dummy, password)
            raise LoginError("wrong user name or password")
        user = self._user(row)
        if user.locked(now):
            raise LoginError("too many failed logins: try again later", locked=True)
        if not self._verify(row["password_hash"], password):
            failed = user.failed_logins + 1
            locked_until = now + self.lockout_seconds if failed >= self.max_failed else None
            with self._db() as db:
                db.execute(
                    "UPDATE users SET failed_logins = ?, locked_until = ? WHERE name = ?",
                    (0 if locked_until else failed, locked_until, name),
                )
            if locked_until is not None:
                raise LoginError("too many failed logins: try again later", locked=True)
            raise LoginError("wrong user name or password")
        with self._db() as db:
            db.execute(
                "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = ?", (name,)
            )
            if self._hasher.check_needs_rehash(row["password_hash"]):
                db.execute(
                    "UPDATE users SET password_hash = ? WHERE name = ?",
                    (self._hasher.hash(password), name),
                )
        return User(user.name, user.role, user.created_at, 0, None)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def open_session(self, user: User, lifetime_seconds: float) -> tuple[str, Session]:
        """A new session for ``user``: the token for the cookie, and the session."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO sessions (token_sha256, user_name, csrf_token, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?)",
                (_token_hash(token), user.name, csrf, now, now + lifetime_seconds),
            )
        return token, Session(user, csrf, now + lifetime_seconds)

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token, or ``None``."""
        with self._db() as db:
            row = db.execute(
                "SELECT s.csrf_token, s.expires_at, u.* FROM sessions s "
                "JOIN users u ON u.name = s.user_name "
                "WHERE s.token_sha256 = ? AND s.expires_at > ?",
                (_token_hash(token), time.time()),
            ).fetchone()
        if row is None:
            return None
        return Session(self._user(row), row["csrf_token"], row["expires_at"])

    def close_session(self, token: str) -> None:
        """End a session (log out)."""
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_token_hash(token),))
