"""`dicomnode run` and `dicomnode route explain`, as an admin uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import parse_config
from dicomnode.jobs import JobState
from tests.conftest import open_store
from tests.helpers import node_config, store_statuses, storescu, wait_for, write_config
from tests.test_cli import dicomnode


def config_with(tmp_path: Path, **sections: object) -> Path:
    return write_config(tmp_path / "node.yaml", node_config(tmp_path, **sections))


def test_run_a_pipeline_offline(tmp_path, ct_series):
    series = ct_series(slices=5, size=16)
    config = config_with(
        tmp_path, runner={"plugins": ["tests.runner.faulty:Threshold"], "device": "cpu"}
    )
    out = tmp_path / "out"
    result = dicomnode(
        "run",
        str(series.paths[0].parent),
        "--pipeline",
        "test-threshold",
        "--out",
        str(out),
        "-c",
        str(config),
    )
    assert result.returncode == 0, result.stderr
    assert "test-threshold on 5 instance(s), cpu" in result.stdout
    assert "Volume" in result.stdout and "mL" in result.stdout
    document = json.loads((out / "result.json").read_text())
    assert document["volume"]["shape"] == [5, 16, 16]
    assert (out / "label_map.npy").exists()


def test_run_refuses_a_broken_series_with_the_reason(tmp_path, ct_series):
    series = ct_series(slices=5, size=16)
    series.paths[2].unlink()  # a missing slice
    config = config_with(tmp_path, runner={"plugins": ["tests.runner.faulty:Threshold"]})
    result = dicomnode(
        "run",
        str(series.paths[0].parent),
        "--pipeline",
        "test-threshold",
        "--out",
        str(tmp_path / "out"),
        "-c",
        str(config),
    )
    assert result.returncode == 1
    assert "missing slice" in result.stderr
    assert not (tmp_path / "out").exists()


def test_run_an_unknown_pipeline(tmp_path, ct_series):
    series = ct_series(slices=2, size=16)
    result = dicomnode(
        "run", str(series.paths[0].parent), "--pipeline", "nope", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 1 and "no pipeline 'nope' is installed" in result.stderr


def test_route_explain_a_folder(tmp_path, ct_series):
    series = ct_series(slices=3, size=16)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "CHEST"
        ds.save_as(path)
    config = config_with(
        tmp_path,
        routing={
            "rules": [
                {
                    "name": "mr-brain",
                    "match": {"series": {"Modality": {"equals": "MR"}}},
                    "pipeline": "ct-lung",
                },
                {
                    "name": "ct-chest",
                    "match": {
                        "series": {
                            "Modality": {"equals": "CT"},
                            "BodyPartExamined": {"one_of": ["CHEST", "THORAX"]},
                        }
                    },
                    "pipeline": "ct-lung",
                },
            ]
        },
    )
    result = dicomnode("route", "explain", str(series.paths[0].parent), "-c", str(config))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert series.study_uid in text
    mr, ct = text.index("mr-brain"), text.index("ct-chest")
    assert "no match" in text[mr:ct] and "Modality" in text[mr:ct]
    assert "MATCHED" in text[ct:]
    assert series.series_uid in text[ct:]


def test_config_check_refuses_a_rule_for_a_missing_pipeline(tmp_path):
    config = config_with(
        tmp_path,
        routing={"rules": [{"name": "x", "pipeline": "not-installed"}]},
    )
    result = dicomnode("config", "check", str(config))
    assert result.returncode == 1
    assert "routing.rules.0.pipeline: no pipeline 'not-installed' is installed" in result.stderr


@pytest.mark.peers
def test_route_explain_a_held_study_explains_one_round(tmp_path, start_node, ct_series):
    config = node_config(
        tmp_path,
        assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
        routing={
            "rules": [
                {
                    "name": "second-series",
                    "match": {"series": {"SeriesDescription": {"equals": "later"}}},
                    "pipeline": "ct-lung",
                }
            ]
        },
    )
    path = write_config(tmp_path / "node.yaml", config)
    settings = parse_config(config)
    start_node(settings)
    first = ct_series(slices=2, size=16, name="first")
    later = ct_series(slices=3, size=16, name="later", study_uid=first.study_uid)
    for part in later.paths:
        ds = pydicom.dcmread(part)
        ds.SeriesDescription = "later"
        ds.save_as(part)
    store = open_store(settings)
    for round_no, series in enumerate((first, later), 1):
        assert store_statuses(storescu(series.paths, settings.node.port).stderr) == [
            "Success"
        ] * len(series.paths)

        def settled(n: int = round_no) -> bool:
            rounds = [
                j for j in store.jobs(study_instance_uid=first.study_uid) if j.kind == "study"
            ]
            return sum(j.state in (JobState.ROUTED, JobState.DISCARDED) for j in rounds) == n

        wait_for(settled, 30, f"round {round_no} to be routed")

    latest = dicomnode("route", "explain", first.study_uid, "-c", str(path))
    assert latest.returncode == 0, latest.stderr
    assert "round 2 of 2: 3 instance(s), ROUTED" in latest.stdout
    assert "MATCHED" in latest.stdout and first.series_uid not in latest.stdout

    earlier = dicomnode("route", "explain", first.study_uid, "--round", "1", "-c", str(path))
    assert earlier.returncode == 0, earlier.stderr
    assert "round 1 of 2: 2 instance(s), DISCARDED" in earlier.stdout
    assert "no match" in earlier.stdout and later.series_uid not in earlier.stdout

    missing = dicomnode("route", "explain", first.study_uid, "--round", "5", "-c", str(path))
    assert missing.returncode == 1
    assert "has rounds 1, 2, not 5" in missing.stderr
