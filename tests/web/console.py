"""A node with its console, users made with the CLI, and an HTTP client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port, node_config

ADMIN = ("alice", "correct horse battery")
VIEWER = ("victor", "viewer password 42")


def console_config(tmp_path: Path, **sections: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A node config with the console on a free loopback port."""
    port = free_port()
    console = {"enabled": True, "port": port, "max_failed_logins": 3, "lockout_minutes": 5}
    console.update(sections.pop("console", {}))
    config = node_config(
        tmp_path,
        console=console,
        assembly={"quiet_seconds": 1, "max_wait_seconds": 3600, "poll_seconds": 0.2},
        **sections,
    )
    return config, port


def users(
    config_path: Path, *args: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``dicomnode users ARGS -c CONFIG``, the password on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", "users", *args, "-c", str(config_path)],
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add_user(config_path: Path, name: str, password: str, role: str) -> None:
    done = users(config_path, "add", name, "--role", role, "--password-stdin", password=password)
    assert done.returncode == 0, done.stderr


def client(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, follow_redirects=False)


def login(port: int, name: str, password: str) -> tuple[httpx.Client, str]:
    """A client with a session, and the session's CSRF token."""
    http = client(port)
    answer = http.post("/api/v1/session", json={"name": name, "password": password})
    assert answer.status_code == 200, answer.text
    return http, answer.json()["csrf_token"]
