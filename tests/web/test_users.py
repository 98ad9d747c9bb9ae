"""The users file: argon2 hashes, lockout and its end, sessions and their end."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from dicomnode.auth import Role, UserStore
from dicomnode.errors import LoginError, UserError

PASSWORD = "a long enough password"


def test_a_lockout_holds_against_the_right_password_and_ends(tmp_path: Path) -> None:
    users = UserStore(tmp_path / "console.db", max_failed=2, lockout_seconds=60)
    users.add("ann", Role.ADMIN, PASSWORD)
    now = time.time()
    with pytest.raises(LoginError) as first:
        users.authenticate("ann", "nope", now=now)
    assert not first.value.locked
    with pytest.raises(LoginError) as second:
        users.authenticate("ann", "nope", now=now)
    assert second.value.locked
    with pytest.raises(LoginError) as during:
        users.authenticate("ann", PASSWORD, now=now + 59)
    assert during.value.locked
    assert users.authenticate("ann", PASSWORD, now=now + 61).name == "ann"
    assert users.users()[0].failed_logins == 0


def test_the_file_keeps_hashes_and_token_digests_only(tmp_path: Path) -> None:
    path = tmp_path / "console.db"
    users = UserStore(path)
    user = users.add("ann", "viewer", PASSWORD)
    token, session = users.open_session(user, 60)
    with sqlite3.connect(path) as db:
        dump = "\n".join(db.iterdump())
    assert PASSWORD not in dump and token not in dump
    assert "$argon2id$" in dump
    assert users.session(token) == session
    assert users.session(token + "x") is None
    users.remove("ann")
    assert users.session(token) is None  # removing a user ends their sessions
    with pytest.raises(UserError, match="role: 'root'"):
        users.add("bob", "root", PASSWORD)


def test_a_session_ends_when_its_time_is_up(tmp_path: Path) -> None:
    users = UserStore(tmp_path / "console.db")
    user = users.add("ann", "admin", PASSWORD)
    token, _ = users.open_session(user, 0.2)
    assert users.session(token) is not None
    deadline = time.monotonic() + 10
    while users.session(token) is not None:
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.05)
    users.close_session(token)
