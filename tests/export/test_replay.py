"""A delivery that gave up is retried by hand; a study's results are replayed."""

from __future__ import annotations

import pytest

from dicomnode.jobs import JobState
from tests.conftest import open_store
from tests.helpers import node_config, storescu, wait_for, write_config
from tests.test_cli import dicomnode

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def test_retry_and_replay_deliveries(make_settings, start_node, ct_series, tmp_path):
    blocked = tmp_path / "out"
    blocked.write_text("a file where the folder should be")  # every delivery fails
    sections = {
        "assembly": {"quiet_seconds": 1.5, "poll_seconds": 0.1},
        "runner": {"enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1},
        "routing": {"rules": [{"name": "ct", "pipeline": "ct-lung", "destinations": ["out"]}]},
        "destinations": {"out": {"type": "folder", "path": str(blocked)}},
        "export": {"poll_seconds": 0.1, "backoff_seconds": 0.1, "max_attempts": 2},
    }
    settings = make_settings(**sections)
    config = write_config(
        tmp_path / "cli.yaml", node_config(tmp_path, settings.node.port, **sections)
    )
    start_node(settings)
    series = ct_series(slices=24, size=64)
    assert storescu(series.paths, settings.node.port).returncode == 0
    store = open_store(settings)

    def settled():
        runs = [j for j in store.jobs() if j.kind == "run"]
        ok = runs and runs[0].state in (JobState.DONE, JobState.DEAD)
        return runs[0] if ok else None

    run = wait_for(settled, 90, "the run to settle")
    assert run.state == JobState.DEAD and "delivery failed" in (run.reason or "")
    assert {(i.state, i.attempts) for i in store.outbox(run.id)} == {("DEAD", 2)}

    shown = dicomnode("jobs", "show", str(run.id), "-c", str(config))
    assert "DESTINATION" in shown.stdout and "DEAD" in shown.stdout

    blocked.unlink()  # the admin fixes the folder...
    retried = dicomnode("jobs", "retry", str(run.id), "-c", str(config))
    assert retried.returncode == 0, retried.stderr
    done = wait_for(
        lambda: store.get_job(run.id).state == JobState.DONE, 60, "the retried delivery"
    )
    assert done
    delivered = sorted(p.name for p in blocked.rglob("*.dcm"))
    assert len(delivered) == 2

    for path in blocked.rglob("*.dcm"):  # ...and later the destination loses them
        path.unlink()
    replayed = dicomnode("replay", series.study_uid, "-c", str(config))
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: sorted(p.name for p in blocked.rglob("*.dcm")) == delivered, 60, "the replay")
    wait_for(lambda: store.get_job(run.id).state == JobState.DONE, 30, "DONE after replay")
    history = [t.to_state for t in store.history(run.id)]
    assert history.count(JobState.RESULTS_WRITTEN) == 3  # written, retried, replayed
