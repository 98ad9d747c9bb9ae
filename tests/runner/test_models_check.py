"""``dicomnode models check``: every configured model verified, loaded and run once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomnode.cli import main
from tests.helpers import node_config
from tests.pipelines.exported_models import (
    LIVER,
    Detector,
    detection_card,
    segmentation_card,
    write_model,
)


def config_file(tmp_path: Path, pipelines: dict[str, Any]) -> Path:
    rules = [
        {"name": f"r-{name}", "match": {"series": {"Modality": {"equals": "CT"}}},
         "pipeline": name}
        for name in pipelines
    ]  # fmt: skip
    config = node_config(
        tmp_path,
        runner={"enabled": True, "device": "cpu", "models_dir": str(tmp_path / "models"),
                "pipelines": pipelines},
        routing={"rules": rules},
    )  # fmt: skip
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_models_check_loads_each_model_runs_it_and_says_what_it_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path / "models", "torchscript", segmentation_card(), name="seg")
    write_model(tmp_path / "models", "onnx", segmentation_card(), name="seg-onnx")
    config = config_file(tmp_path, {"torchscript": {"model": "seg"}, "onnx": {"model": "seg-onnx"}})
    assert main(["models", "check", "-c", str(config), "--json"]) == 0
    onnx, torchscript = json.loads(capsys.readouterr().out)
    assert (onnx["pipeline"], onnx["ok"], torchscript["pipeline"]) == ("onnx", True, "torchscript")
    report = torchscript["report"]
    assert report["name"] == "seg" and report["parameters"] == 3 * 1 + 3 + 3 * 3 * 27
    assert report["labels"] == [
        "1: liver (SCT 10200004 Liver)",
        "2: dense (SCT 3138006 Bone tissue)",
    ]
    assert report["input_contract"].startswith("segmentation, modalities CT, orientation RAS")
    assert report["output"] == "input (1, 1, 16, 16, 8) -> segmentation (1, 3, 16, 16, 8)"
    assert report["device"].startswith("torch ")
    assert onnx["report"]["device"] == "CPUExecutionProvider"
    assert onnx["report"]["parameters"] == report["parameters"]
    assert torchscript["rules"] == ["routing.rules.0 (r-torchscript)"]
    assert main(["models", "check", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert "pipeline torchscript: OK" in text and "  parameters  249" in text


def test_a_wrong_sha256_is_refused_before_anything_runs_and_stops_config_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path / "models", "torchscript", detection_card(), network=Detector())
    config = config_file(tmp_path, {"torchscript": {"model": "tiny"}})
    assert main(["models", "check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "boxes (1, 6), scores (1,)" in out and "1: nodule (SCT 27925004 Nodule)" in out
    weights = tmp_path / "models" / "tiny" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert main(["models", "check", "-c", str(config), "--json"]) == 1
    (check,) = json.loads(capsys.readouterr().out)
    assert check["report"] is None and check["models"] == []
    assert "model.pt has SHA-256" in check["problem"] and "refusing to load it" in check["problem"]
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert "routing.rules.0 (rule 'r-torchscript'): pipeline 'torchscript'" in err
    assert "refusing to load it" in err


def test_a_network_that_does_not_fit_its_card_stops_config_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = segmentation_card()
    card["output"]["labels"][5] = {"name": "more", "type": LIVER}
    write_model(tmp_path / "models", "onnx", card)
    config = config_file(tmp_path, {"onnx": {"model": "tiny"}})
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert "pipeline 'onnx': onnx: model 'tiny': output (1, 3, 16, 16, 8)" in err
    assert main(["models", "check", "-c", str(config)]) == 1
    assert "problem     InputRefused: onnx: model 'tiny': output" in capsys.readouterr().out


def test_nnunet_folders_and_monai_bundles_are_test_run_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.pipelines.test_monai_bundle import write_bundle
    from tests.pipelines.test_nnunet import write_manifest

    write_manifest(tmp_path / "models", spacing=(2.5, 10.0, 10.0))
    bundle = write_bundle(tmp_path / "bundle")
    config = config_file(
        tmp_path,
        {"nnunet": {"nnunet": {"model": "tiny"}}, "monai-bundle": {"bundle": str(bundle)}},
    )
    assert main(["models", "check", "-c", str(config), "--json"]) == 0
    monai, nnunet = json.loads(capsys.readouterr().out)
    assert monai["pipeline"] == "monai-bundle" and monai["ok"]
    assert monai["report"]["output"] == "input (1, 1, 32, 32, 32) -> (1, 2, 32, 32, 32)"
    assert monai["report"]["labels"] == ["0: background", "1: spleen"]
    assert "postprocessing Activationsd, AsDiscreted" in monai["report"]["input_contract"]
    assert nnunet["pipeline"] == "nnunet" and nnunet["ok"]
    report = nnunet["report"]
    assert report["labels"] == ["1: liver (SCT 10200004 Liver)", "2: bone (not coded)"]
    assert report["output"].startswith("input (1, 1, ") and report["parameters"] > 0
    assert nnunet["models"][0]["name"] == "tiny"
