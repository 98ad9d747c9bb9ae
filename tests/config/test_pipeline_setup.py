"""`config check` and `serve` refuse rules whose pipelines cannot run: no model
manifest, weights that are not the manifest's, no bundle or a broken one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import node_config, write_config
from tests.pipelines.test_monai_bundle import write_bundle
from tests.runner.test_registry_manifest import write_model
from tests.test_cli import dicomnode

CXR_LABELS = [
    {
        "index": 0,
        "name": "nodule",
        "threshold": 0.5,
        "code": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"},
    }
]


def rule(name: str, pipeline: str) -> dict[str, object]:
    return {
        "name": name,
        "match": {"series": {"SeriesDescription": {"equals": name}}},
        "pipeline": pipeline,
    }


def config(tmp_path: Path, rules: list[dict[str, object]], **runner: Any) -> Path:
    settings = {
        "enabled": True,
        "device": "cpu",
        "models_dir": str(tmp_path / "models"),
        "plugins": ["tests.runner.faulty:WithModel"],
        **runner,
    }
    return write_config(
        tmp_path / "node.yaml", node_config(tmp_path, routing={"rules": rules}, runner=settings)
    )


def write_cxr_manifest(models: Path, **changes: object) -> None:
    """A cxr-classify manifest over a weights file (not loaded by the check)."""
    models.mkdir(exist_ok=True)
    (models / "cxr.pt").write_bytes(b"weights")
    manifest = {
        "name": "cxr-classify",
        "version": "1.0.0",
        "file": "cxr.pt",
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "labels": CXR_LABELS,
        "input": {"network": "DenseNet121", "size": [64, 64]},
        "intended_use": "tests only",
        **changes,
    }
    (models / "cxr-classify.yaml").write_text(yaml.safe_dump(manifest))


def test_config_check_names_the_rule_the_pipeline_and_what_is_missing(tmp_path: Path) -> None:
    write_model(tmp_path / "models", b"0.5", sha256="0" * 64)  # weights not the manifest's
    path = config(
        tmp_path,
        [
            rule("chest-xr", "cxr-classify"),
            rule("spleen", "monai-bundle"),
            rule("tiny", "test-model"),
            rule("lungs", "ct-lung"),
        ],
    )
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 1, result.stdout
    err = result.stderr
    assert "invalid configuration" in err and "OK" not in result.stdout
    assert (
        "routing.rules.0 (rule 'chest-xr'): pipeline 'cxr-classify': model 'cxr-classify': "
        f"no manifest at {tmp_path / 'models' / 'cxr-classify.yaml'}"
    ) in err
    assert (
        "routing.rules.1 (rule 'spleen'): pipeline 'monai-bundle': no bundle folder: "
        "set runner.pipelines.monai-bundle.bundle"
    ) in err
    assert "routing.rules.2 (rule 'tiny'): pipeline 'test-model': model 'tiny-model' 1.2.3" in err
    assert "refusing to load it" in err
    assert "rule 'lungs'" not in err  # ct-lung needs nothing


def test_a_bundle_that_is_missing_or_not_the_bundles_weights(tmp_path: Path) -> None:
    broken = write_bundle(tmp_path / "broken", sha256="0" * 64)  # declares other weights
    path = config(
        tmp_path,
        [rule("spleen", "monai-bundle")],
        pipelines={"monai-bundle": {"bundle": str(tmp_path / "nowhere")}},
    )
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 1
    assert f"the bundle folder {tmp_path / 'nowhere'} does not exist" in result.stderr

    path = config(
        tmp_path,
        [rule("spleen", "monai-bundle")],
        pipelines={"monai-bundle": {"bundle": str(broken)}},
    )
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 1
    assert "routing.rules.0 (rule 'spleen'): pipeline 'monai-bundle'" in result.stderr
    assert "the weights are not the bundle's" in result.stderr


def test_a_manifest_the_pipeline_cannot_use_is_refused(tmp_path: Path) -> None:
    labels = [{k: v for k, v in CXR_LABELS[0].items() if k != "threshold"}]
    write_cxr_manifest(tmp_path / "models", labels=labels)
    result = dicomnode("config", "check", str(config(tmp_path, [rule("xr", "cxr-classify")])))
    assert result.returncode == 1
    assert "model 'cxr-classify' 1.0.0: no threshold for label(s) nodule" in result.stderr


def test_a_config_whose_pipelines_have_what_they_need_is_ok(tmp_path: Path) -> None:
    write_model(tmp_path / "models", b"0.5")
    write_cxr_manifest(tmp_path / "models")
    bundle = write_bundle(tmp_path / "spleen_ct_segmentation")
    path = config(
        tmp_path,
        [
            rule("chest-xr", "cxr-classify"),
            rule("spleen", "monai-bundle"),
            rule("tiny", "test-model"),
            rule("lungs", "ct-lung"),
        ],
        pipelines={"monai-bundle": {"bundle": str(bundle)}},
    )
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"{path}: OK")


def test_without_a_runner_models_are_checked_where_pipelines_run(tmp_path: Path) -> None:
    path = config(tmp_path, [rule("chest-xr", "cxr-classify")], enabled=False)
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "runner.enabled is false" in result.stdout


def test_serve_refuses_to_start(tmp_path: Path) -> None:
    path = config(tmp_path, [rule("chest-xr", "cxr-classify")])
    result = dicomnode("serve", "-c", str(path))
    assert result.returncode == 2
    assert "the node cannot start" in result.stderr
    assert "routing.rules.0 (rule 'chest-xr'): pipeline 'cxr-classify': model" in result.stderr
    assert not (tmp_path / "data" / "dicomnode.lock").exists()
