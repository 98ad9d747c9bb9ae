"""Promoting a rule's shadow candidate: rewriting the node YAML, with a backup.

``dicomnode shadow promote RULE`` makes the candidate the rule's pipeline:
the rule's ``pipeline`` becomes its ``shadow.pipeline`` and the ``shadow``
key goes. The file is first copied beside itself
(``<name>.<YYYYmmddTHHMMSS>.bak``, UTC, as the console's save names it;
comments and all), the new configuration
is validated as a whole before it replaces the old one (atomically), and
the caller records the promotion in the job store. The rewritten file is
plain YAML: comments stay only in the backup. The running node applies it at
its next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dicomnode.config.loader import parse_config
from dicomnode.errors import ConfigError

__all__ = ["Promotion", "promote_candidate"]


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote_candidate` changed.

    Attributes
    ----------
    rule : str
    from_pipeline, to_pipeline : str
        The production pipeline before, and the candidate that replaced it.
    config_path, backup_path : Path
    """

    rule: str
    from_pipeline: str
    to_pipeline: str
    config_path: Path
    backup_path: Path


def _find_rule(document: dict[str, Any], name: str) -> dict[str, Any]:
    routing = document.get("routing") or {}
    candidates = list(routing.get("rules") or [])
    if routing.get("fallback"):
        candidates.append(routing["fallback"])
    for rule in candidates:
        if isinstance(rule, dict) and rule.get("name") == name:
            return rule
    raise ConfigError(f"routing: no rule named {name!r}")


def promote_candidate(path: Path, rule_name: str, now: float | None = None) -> Promotion:
    """Make ``rule_name``'s shadow candidate its pipeline, in the YAML at ``path``.

    Parameters
    ----------
    path : Path
        The node's configuration file.
    rule_name : str
        The rule (or the fallback) whose ``shadow.pipeline`` is promoted.
    now : float, optional
        Seconds since the epoch, for the backup's name.

    Returns
    -------
    Promotion

    Raises
    ------
    ConfigError
        No such rule, the rule has no shadow candidate, or the rewritten
        configuration would not be valid; the file is then left as it was.
    """
    text = path.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a YAML mapping")
    rule = _find_rule(document, rule_name)
    shadow = rule.get("shadow")
    if not isinstance(shadow, dict) or not shadow.get("pipeline"):
        raise ConfigError(f"routing: rule {rule_name!r} has no shadow candidate to promote")
    before, after = str(rule.get("pipeline")), str(shadow["pipeline"])
    rule["pipeline"] = after
    del rule["shadow"]
    new_text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    parse_config(yaml.safe_load(new_text))  # refuse to write an invalid file
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    backup = path.with_name(f"{path.name}.{stamp}.bak")
    shutil.copy2(path, backup)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(new_text)
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(path, staging)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return Promotion(rule_name, before, after, path, backup)
