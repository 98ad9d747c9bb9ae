"""The RIS (hl7apy's MLLP server) receives the ORU^R01 of a finished run."""

from __future__ import annotations

import pytest
from hl7apy.parser import parse_message

from dicomnode.jobs import AuditEvent, JobState
from tests.conftest import open_store
from tests.export.mllp_ris import running_ris
from tests.helpers import storescu, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def settings_for(make_settings, tmp_path, ris_port: int):
    return make_settings(
        assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
        runner={"enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1},
        routing={
            "rules": [
                {
                    "name": "ct",
                    "pipeline": "ct-lung",
                    "destinations": ["disk"],
                    "notify": ["ris"],
                }
            ]
        },
        destinations={
            "disk": {"type": "folder", "path": str(tmp_path / "disk")},
            "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris_port, "timeout_seconds": 3},
        },
        export={"poll_seconds": 0.2, "backoff_seconds": 0.5, "max_backoff_seconds": 1},
    )


def finished(store):
    runs = [j for j in store.jobs() if j.kind == "run"]
    if runs and runs[0].state in (JobState.DONE, JobState.DEAD):
        return runs[0]
    return None


@pytest.mark.parametrize("answer", ["AA", "AE"])
def test_the_ris_gets_the_oru(make_settings, start_node, ct_series, tmp_path, answer):
    with running_ris(answer, reason="unknown patient") as ris:
        settings = settings_for(make_settings, tmp_path, ris.port)
        start_node(settings)
        series = ct_series(slices=24, size=64)
        assert storescu(series.paths, settings.node.port).returncode == 0
        store = open_store(settings)
        run = wait_for(lambda: finished(store), 120, "the run to finish", interval=0.3)
        assert len(ris.received) == 1
        message = parse_message(ris.received[0].replace("\n", "\r"))
        assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
        assert series.study_uid in ris.received[0]
        if answer == "AA":
            assert run.state == JobState.DONE
        else:
            assert run.state == JobState.DEAD
            assert "unknown patient" in (run.reason or "")
            notification = [i for i in store.outbox(run.id) if i.kind == "notification"]
            assert [(i.state, i.attempts) for i in notification] == [("DEAD", 1)]
        # the audit trail has the message sent and the RIS's answer; the folder's copies too
        (sent,) = store.audit_records(event=str(AuditEvent.HL7_SENT))
        assert (sent.entry.target, sent.entry.detail["ack"]) == ("ris", [answer])
        assert sent.entry.outcome == ("success" if answer == "AA" else "failure")
        (copied,) = store.audit_records(event=str(AuditEvent.RESULTS_SENT))
        assert (copied.entry.target, copied.entry.action, copied.entry.outcome) == (
            "disk",
            "folder",
            "success",
        )
