"""Reloading the configuration of a running node.

The node holds an exclusive lock on ``<data_dir>/dicomnode.lock`` and writes
its pid there. ``dicomnode config reload`` (or :meth:`Admin.reload
<dicomnode.admin.Admin.reload>`) validates the file first, then leaves a
request naming who asked (``<data_dir>/run/reload-request.json``) and sends
the node SIGHUP. The node re-reads and validates the file itself
(:func:`plan_reload`), applies what a reload can apply (rules, destinations,
export settings) to what it does from then on, keeps the old configuration
when the file is invalid, and records one ``config-reload`` audit row either
way. A plain ``kill -HUP`` works the same, recorded as asked by ``SIGHUP``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dicomnode.config import Settings, load_config, parse_config
from dicomnode.errors import ConfigError, DicomNodeError
from dicomnode.jobs import AuditEntry, AuditEvent

#: Top-level sections a reload applies; a change elsewhere needs a restart.
RELOADABLE = ("routing", "destinations", "export")
LOCK_NAME = "dicomnode.lock"
REQUEST_NAME = "reload-request.json"
#: The text of the configuration file the node runs with (for before/after).
IN_FORCE_NAME = "config-in-force.yaml"


def run_dir(settings: Settings) -> Path:
    """Where the node keeps its run-time files."""
    return settings.storage.data_dir / "run"


def running_pid(settings: Settings) -> int | None:
    """The pid of the node running on this data directory, or ``None``.

    A node is running when the lock file is locked; the pid is what it wrote there.
    """
    path = settings.storage.data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def validate(path: Path) -> Settings:
    """Read and validate a configuration file as ``serve`` does.

    Raises
    ------
    ConfigError
        Its problems name their field paths.
    """
    from dicomnode.runner.requirements import setup_problems

    settings = load_config(path)
    problems = setup_problems(settings)
    if problems:
        raise ConfigError(
            f"{path}: invalid configuration: its rules route to pipelines that cannot run here",
            problems,
        )
    return settings


def where_the_node_runs(path: Path) -> Settings:
    """Settings that locate the node of ``path`` (its data directory and job
    store) even when the file is invalid elsewhere: a reload of a broken file
    must still reach the node's audit trail to record the refusal.

    Raises
    ------
    ConfigError
        The storage or database section itself is invalid (or the file is
        not YAML): the node cannot be found.
    """
    try:
        return load_config(path)
    except ConfigError as exc:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, ValueError, RecursionError):
            raise exc from None
        if not isinstance(data, dict):
            raise
        located = {key: data[key] for key in ("storage", "database") if key in data}
        try:
            return parse_config(located, str(path))
        except ConfigError:
            raise exc from None


def _sections(settings: Settings) -> dict[str, Any]:
    dumped: dict[str, Any] = settings.model_dump(mode="json")
    return dumped


def changed_sections(old: Settings, new: Settings) -> list[str]:
    """Top-level sections whose values differ."""
    a, b = _sections(old), _sections(new)
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def write_request(settings: Settings, actor: str) -> Path:
    """Leave the request the node reads on SIGHUP (who asked, when)."""
    directory = run_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REQUEST_NAME
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"actor": actor, "at": time.time()}), encoding="utf-8")
    os.replace(temporary, path)
    return path


def take_request(settings: Settings) -> str:
    """Who asked for the reload the node is doing (the request is removed)."""
    path = run_dir(settings) / REQUEST_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        path.unlink()
    except (OSError, ValueError):
        return "SIGHUP"
    actor = document.get("actor") if isinstance(document, dict) else None
    return str(actor) if actor else "SIGHUP"


def remember_in_force(settings: Settings, config_path: Path) -> None:
    """Keep the text of the file the node now runs with."""
    directory = run_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError:
        return
    temporary = directory / (IN_FORCE_NAME + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, directory / IN_FORCE_NAME)


def in_force_text(settings: Settings) -> str | None:
    """The text of the file the running node last loaded, if it kept one."""
    try:
        return (run_dir(settings) / IN_FORCE_NAME).read_text(encoding="utf-8")
    except OSError:
        return None


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does: the new settings (``None`` when refused) and its audit row."""

    settings: Settings | None
    changed: list[str]
    restart_needed: list[str]
    problems: list[str]
    audit: AuditEntry


def plan_reload(current: Settings, config_path: Path, actor: str) -> ReloadPlan:
    """Validate ``config_path`` against the configuration in force.

    Returns the settings to run with from now on: the new file's reloadable
    sections over the current settings (the other sections keep their values
    until a restart), or ``None`` when the file is refused; and the audit row
    that records it (before/after as the files' text).
    """
    before = in_force_text(current)
    try:
        after = config_path.read_text(encoding="utf-8")
    except OSError:
        after = None
    try:
        new = validate(config_path)
    except ConfigError as exc:
        problems = exc.problems or [str(exc)]
        entry = AuditEntry(
            AuditEvent.CONFIG_RELOAD,
            actor,
            action="reload",
            target=str(config_path),
            outcome="refused",
            detail={"problems": problems, "before": before, "after": after},
        )
        return ReloadPlan(None, [], [], problems, entry)
    except DicomNodeError as exc:
        problems = [str(exc)]
        entry = AuditEntry(
            AuditEvent.CONFIG_RELOAD,
            actor,
            action="reload",
            target=str(config_path),
            outcome="refused",
            detail={"problems": problems, "before": before, "after": after},
        )
        return ReloadPlan(None, [], [], problems, entry)
    changed = changed_sections(current, new)
    restart = [name for name in changed if name not in RELOADABLE]
    merged = current.model_copy(update={name: getattr(new, name) for name in RELOADABLE})
    entry = AuditEntry(
        AuditEvent.CONFIG_RELOAD,
        actor,
        action="reload",
        target=str(config_path),
        outcome="success",
        detail={
            "changed": changed,
            "restart_needed": restart,
            "before": before,
            "after": after,
        },
    )
    return ReloadPlan(merged, changed, restart, [], entry)
