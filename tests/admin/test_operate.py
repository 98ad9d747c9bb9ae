"""Operating a running node through the admin layer's CLI: search, show, hold,
release, discard, test a destination, replay a dead delivery; each action
leaves exactly its audit rows, and no patient identifier reaches the log."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dicomnode.admin import Admin
from dicomnode.config import load_config
from dicomnode.jobs import JobState, SQLiteJobStore
from tests.helpers import echo, node_config, storescu, wait_for
from tests.orthanc import Orthanc
from tests.test_cli import dicomnode

pytestmark = [pytest.mark.peers, pytest.mark.slow]

#: Identifiers that must reach the audit trail and never a log line.
PATIENT_NAME = "CANARYNAME^ZEBRA"
PATIENT_ID = "PID-CANARY-7731"
ACCESSION = "ACC-CANARY-42"
CANARIES = ("CANARYNAME", "ZEBRA", PATIENT_ID, ACCESSION)


def cli(config: Path, *args: str, ok: bool = True) -> Any:
    """Run ``dicomnode ARGS -c CONFIG --json`` as alice; return the parsed JSON."""
    result = dicomnode(*args, "--json", "-c", str(config))
    if ok:
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    assert result.returncode != 0, result.stdout
    return result


def audit_rows(config: Path, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli(config, "audit", "list", "--limit", "1000", *args)
    return rows[::-1]  # oldest first


def node_settings(tmp_path: Path, orthanc: Orthanc) -> dict[str, Any]:
    return node_config(
        tmp_path,
        assembly={"quiet_seconds": 3, "poll_seconds": 0.1},
        runner={"enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1},
        routing={
            "rules": [
                {
                    "name": "ct",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": "ct-lung",
                    "destinations": ["pacs"],
                }
            ]
        },
        destinations={
            "pacs": {
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "timeout_seconds": 5,
            }
        },
        export={
            "poll_seconds": 0.1,
            "backoff_seconds": 0.2,
            "max_backoff_seconds": 0.5,
            "max_attempts": 2,
        },
    )


def test_search_show_hold_release_discard_and_replay_leave_their_audit_rows(
    node_process, ct_series, tmp_path, monkeypatch
):
    monkeypatch.setenv("USER", "alice")  # the CLI's actor
    orthanc = Orthanc(tmp_path / "orthanc")
    config = node_settings(tmp_path, orthanc)
    try:
        orthanc.start()
        node = node_process(config)
        path = node.config_path
        settings = load_config(path)
        store = SQLiteJobStore(settings.database_url)
        admin = Admin(settings, store, config_path=path)

        tested = cli(path, "destinations", "test", "pacs")
        assert tested["ok"] and "Success" in tested["detail"], tested
        orthanc.stop()  # the PACS goes down
        down = cli(path, "destinations", "test", "pacs", ok=False)
        assert down.returncode == 1
        failed = json.loads(down.stdout)
        assert not failed["ok"] and "Connection refused" in failed["detail"], failed

        assert not echo(node.port, calling="INTRUDER")  # refused, and audited

        # a study held before it is routed waits, while a later one goes on
        held = ct_series(slices=4, size=32, name="held")
        assert storescu(held.paths, node.port).returncode == 0
        (held_round,) = store.jobs(study_instance_uid=held.study_uid)
        assert held_round.state == JobState.RECEIVED  # quiet for 3 s yet
        assert admin.hold(held_round.id, "alice").held

        study = ct_series(
            slices=24,
            size=64,
            patient_name=PATIENT_NAME,
            patient_id=PATIENT_ID,
            accession=ACCESSION,
        )
        assert storescu(study.paths, node.port).returncode == 0

        def dead_run() -> Any:
            runs = [j for j in store.jobs(study_instance_uid=study.study_uid) if j.kind == "run"]
            return runs[0] if runs and runs[0].state == JobState.DEAD else None

        run = wait_for(dead_run, 120, "the delivery to the PACS to give up", interval=0.2)
        (held_now,) = store.jobs(study_instance_uid=held.study_uid)
        assert (held_now.state, held_now.held_by) == (JobState.COMPLETE, "alice")

        # search by accession number and by patient ID; a table shortens UIDs
        for flag, value in (("--accession", ACCESSION), ("--patient-id", PATIENT_ID)):
            (found,) = cli(path, "studies", "list", flag, value)
            assert found["study_instance_uid"] == study.study_uid
            assert (found["accession_number"], found["patient_id"]) == (ACCESSION, PATIENT_ID)
            assert found["run_states"] == {"DEAD": 1} and found["rules"] == ["ct"]
        assert cli(path, "studies", "--patient-id", "NOBODY") == []
        (held_found,) = cli(path, "studies", "--state", "COMPLETE")
        assert held_found["study_instance_uid"] == held.study_uid and held_found["held"]
        table = dicomnode("studies", "-c", str(path)).stdout
        assert study.study_uid not in table and "…" + study.study_uid[-12:] in table

        shown = cli(path, "studies", "show", study.study_uid)
        (round_,) = shown["rounds"]
        (run_row,) = round_["runs"]
        assert (run_row["id"], run_row["state"], run_row["rule"]) == (run.id, "DEAD", "ct")
        assert sorted(d["object"][:3] for d in run_row["deliveries"]) == ["SEG", "SR_"]
        assert {(d["state"], d["attempts"]) for d in run_row["deliveries"]} == {("DEAD", 2)}
        assert [s["to_state"] for s in round_["round"]["history"]] == [
            "RECEIVED",
            "COMPLETE",
            "ROUTED",
        ]

        refused = cli(path, "jobs", "discard", str(round_["round"]["id"]), ok=False)
        assert "ROUTED and it is not held" in refused.stderr
        assert store.get_job(round_["round"]["id"]).state == JobState.ROUTED

        released = cli(path, "jobs", "release", str(held_round.id))
        assert (released["before"], released["held"]) == ("COMPLETE", False)

        def held_run_settled() -> Any:
            runs = [j for j in store.jobs(study_instance_uid=held.study_uid) if j.kind == "run"]
            return runs[0] if runs and runs[0].state == JobState.DEAD else None

        held_run = wait_for(held_run_settled, 120, "the released study's run", interval=0.2)
        discarded = cli(path, "jobs", "discard", str(held_run.id))
        assert (discarded["before"], discarded["after"]) == ("DEAD", "DISCARDED")

        orthanc.start()  # the PACS is back: replay the dead delivery
        replayed = cli(path, "jobs", "replay", str(run.id))
        assert (replayed["before"], replayed["after"]) == ("DEAD", "RESULTS_WRITTEN")
        wait_for(lambda: store.get_job(run.id).state == JobState.DONE, 60, "the replay")
        assert orthanc.get("/statistics")["CountInstances"] == 2  # SEG and SR, once each
        assert {i.state for i in store.outbox(run.id)} == {"DELIVERED"}
        assert admin.preview(study_uid=study.study_uid).startswith(b"\x89PNG")
    finally:
        orthanc.stop()

    actions = [
        (r["action"], r["target"], r["outcome"])
        for r in audit_rows(path, "--event", "admin-action", "--actor", "alice")
    ]
    assert actions == [
        ("test-destination", "pacs", "success"),
        ("test-destination", "pacs", "failure"),
        ("hold", f"job {held_round.id}", "success"),
        ("discard", f"job {round_['round']['id']}", "refused"),
        ("release", f"job {held_round.id}", "success"),
        ("discard", f"job {held_run.id}", "success"),
        ("replay", f"job {run.id}", "success"),
    ]
    (stored,) = audit_rows(path, "--event", "instances-stored", "--study", study.study_uid)
    assert (stored["actor"], stored["patient_id"], stored["patient_name"]) == (
        "SCANNER",
        PATIENT_ID,
        PATIENT_NAME,
    )
    assert stored["accession_number"] == ACCESSION
    assert stored["detail"] == {"instances": 24, "series": 1}
    accepted = audit_rows(path, "--event", "association-accepted")
    assert stored["address"] in {r["address"] for r in accepted}
    (intruder,) = audit_rows(path, "--event", "association-refused")
    assert (intruder["actor"], intruder["outcome"]) == ("INTRUDER", "refused")
    (written,) = audit_rows(path, "--event", "results-written", "--study", study.study_uid)
    assert len(written["detail"]["objects"]) == 2
    sent = audit_rows(path, "--event", "results-sent", "--study", study.study_uid)
    assert [(r["target"], r["outcome"]) for r in sent] == [
        ("pacs", "failure"),
        ("pacs", "failure"),
        ("pacs", "success"),
    ]
    assert sorted(sent[-1]["detail"]["delivered"]) == sorted(
        i.sop_instance_uid for i in store.outbox(run.id)
    )

    if settings.database.is_sqlite:
        raw = sqlite3.connect(settings.database_path)
        for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(statement)
        raw.close()

    log = node.log()
    assert "association from SCANNER" in log and "delivered" in log
    for canary in CANARIES:
        assert canary not in log
