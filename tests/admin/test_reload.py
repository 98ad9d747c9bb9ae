"""``dicomnode config reload``: an invalid file is refused with its field path
and the old rules stay in force; a valid one applies to the studies routed
after it, without dropping an association in progress; both are audited."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomnode.admin import Admin
from dicomnode.config import load_config
from dicomnode.jobs import AuditEvent, SQLiteJobStore
from tests.helpers import PEER_ENV, node_config, require_tool, store_statuses, storescu, wait_for
from tests.test_cli import dicomnode

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def rule(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"series": {"Modality": {"equals": "CT"}}},
        "pipeline": "ct-lung",
        **extra,
    }


def reload(path: Path) -> subprocess.CompletedProcess[str]:
    return dicomnode("config", "reload", "--json", "--as", "alice", "-c", str(path))


def test_reload_refuses_an_invalid_file_and_applies_a_valid_one(node_process, ct_series, tmp_path):
    # runs stay ROUTED (no runner): the rule a run came from is what is checked
    config = node_config(
        tmp_path,
        assembly={"quiet_seconds": 1, "poll_seconds": 0.1},
        routing={"rules": [rule("old-rule")]},
    )
    node = node_process(config)
    path = node.config_path
    settings = load_config(path)
    store = SQLiteJobStore(settings.database_url)
    admin = Admin(settings, store, config_path=path)

    def routed_rule(study_uid: str) -> str | None:
        runs = [j for j in store.jobs(study_instance_uid=study_uid) if j.kind == "run"]
        return runs[0].rule if runs else None

    broken = yaml.safe_load(path.read_text())
    broken["routing"]["rules"] = [rule("new-rule", destinations=["nowhere"], priority="high")]
    path.write_text(yaml.safe_dump(broken))
    refused = reload(path)
    assert refused.returncode == 1, refused.stdout
    answer = json.loads(refused.stdout)
    assert not answer["applied"] and answer["node_running"]
    assert any(p.startswith("routing.rules.0.priority:") for p in answer["problems"]), answer
    # the node refuses it too, when sent SIGHUP by hand, and keeps running
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGHUP)
    wait_for(
        lambda: len(store.audit_records(event=str(AuditEvent.CONFIG_RELOAD))) == 2,
        30,
        "the node to refuse the file",
    )

    first = ct_series(slices=3, size=16, name="first")
    assert storescu(first.paths, node.port).returncode == 0
    assert wait_for(lambda: routed_rule(first.study_uid), 30, "the first study's run") == (
        "old-rule"
    )

    fixed = yaml.safe_load(path.read_text())
    fixed["routing"]["rules"] = [rule("new-rule", priority=5)]
    path.write_text(yaml.safe_dump(fixed))
    # the file's rules tried on what was received, before the node takes them
    dry = dicomnode("route", "dry-run", "--json", "-c", str(path))
    assert dry.returncode == 0, dry.stderr
    (tried,) = json.loads(dry.stdout)
    assert (tried["study_instance_uid"], tried["before"], tried["after"]) == (
        first.study_uid,
        ["old-rule"],
        ["new-rule"],
    )
    assert tried["changed"] and tried["explanation"]["rules"][0]["matched"]
    # a push in progress while the node reloads: every instance is stored
    second = ct_series(slices=40, size=64, name="second")
    push = subprocess.Popen(
        [
            require_tool("storescu"),
            "-v",
            "-aet",
            "SCANNER",
            "-aec",
            "DICOMNODE",
            "127.0.0.1",
            str(node.port),
            *map(str, second.paths),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=PEER_ENV,
    )
    try:
        wait_for(lambda: store.has_instance(second.sop_uids[0]), 30, "the push to begin")
        # held, so that it is routed only after the reload, however fast the push
        (second_round,) = store.jobs(study_instance_uid=second.study_uid)
        admin.hold(second_round.id, "alice")
        applied = reload(path)
    finally:
        _, err = push.communicate(timeout=120)
    admin.release(second_round.id, "alice")
    assert applied.returncode == 0, applied.stderr
    answer = json.loads(applied.stdout)
    assert answer["applied"] and answer["changed_sections"] == ["routing"], answer
    assert push.returncode == 0 and store_statuses(err) == ["Success"] * 40
    assert wait_for(lambda: routed_rule(second.study_uid), 30, "the second study's run") == (
        "new-rule"
    )
    in_force = admin.configuration_in_force()
    assert in_force is not None and "new-rule" in in_force
    (old_run,) = [j for j in store.jobs(study_instance_uid=first.study_uid) if j.kind == "run"]
    assert old_run.rule == "old-rule"  # routed before: left as it was

    reloads = store.audit_records(event=str(AuditEvent.CONFIG_RELOAD), oldest_first=True)
    assert [(r.entry.actor, r.entry.outcome) for r in reloads] == [
        ("alice", "refused"),
        ("SIGHUP", "refused"),
        ("alice", "success"),
    ]
    for refusal in reloads[:2]:
        assert any("routing.rules.0.priority" in p for p in refusal.entry.detail["problems"])
    before, after = (str(reloads[2].entry.detail[k]) for k in ("before", "after"))
    assert "old-rule" in before and "new-rule" not in before and "new-rule" in after

    log = node.log()
    assert "configuration reload refused" in log and "routing.rules.0.priority" in log
    assert "configuration reloaded (routing changed)" in log
    assert "PHANTOM" not in log  # the synthetic patient's name and ID
    assert storescu(first.paths[:1], node.port).returncode == 0  # still serving
