"""The pipeline registry and model manifests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from dicomnode.errors import DuplicatePipelineError, ModelError, PipelineNotFoundError
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.registry import PipelineRegistry


def test_entry_points_and_plugins() -> None:
    registry = PipelineRegistry.discover(["tests.runner.faulty:Threshold"])
    assert "ct-lung" in registry.names()
    assert "test-threshold" in registry
    assert registry.create("test-threshold").name == "test-threshold"


def test_a_duplicate_name_is_refused() -> None:
    with pytest.raises(DuplicatePipelineError, match="declared twice"):
        PipelineRegistry.discover(
            ["tests.runner.faulty:Threshold", "tests.runner.faulty:AlsoThreshold"]
        )


def test_unknown_and_broken_plugins() -> None:
    registry = PipelineRegistry.discover()
    with pytest.raises(PipelineNotFoundError, match=r"installed: .*ct-lung"):
        registry.create("no-such-pipeline")
    with pytest.raises(PipelineNotFoundError, match="module:attribute"):
        PipelineRegistry.discover(["tests.runner.faulty.Threshold"])
    with pytest.raises(PipelineNotFoundError, match="cannot be imported"):
        PipelineRegistry.discover(["tests.runner.nothing:Here"])


def write_model(models: Path, content: bytes, sha256: str | None = None, **extra: object) -> None:
    models.mkdir(exist_ok=True)
    (models / "tiny.bin").write_bytes(content)
    manifest = {
        "name": "tiny-model",
        "version": "1.2.3",
        "file": "tiny.bin",
        "sha256": sha256 or hashlib.sha256(content).hexdigest(),
        "labels": [
            {
                "index": 0,
                "name": "nodule",
                "threshold": 0.4,
                "code": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"},
            }
        ],
        "input": {"modalities": ["CT"]},
        "intended_use": "tests only",
        **extra,
    }
    (models / "tiny-model.yaml").write_text(yaml.safe_dump(manifest))


def test_verified_model(tmp_path: Path) -> None:
    write_model(tmp_path, b"0.5")
    model = verify_model(tmp_path, "tiny-model")
    assert model.sha256 == hashlib.sha256(b"0.5").hexdigest()
    assert model.path == (tmp_path / "tiny.bin").resolve()
    assert model.labels[0][1] == "nodule" and model.thresholds == {"nodule": 0.4}


def test_hash_mismatch_names_the_model(tmp_path: Path) -> None:
    write_model(tmp_path, b"0.5", sha256="0" * 64)
    with pytest.raises(ModelError, match=r"model .tiny-model. 1\.2\.3: weights file tiny\.bin has"):
        verify_model(tmp_path, "tiny-model")


def test_missing_weights_and_manifest(tmp_path: Path) -> None:
    write_model(tmp_path, b"0.5")
    (tmp_path / "tiny.bin").unlink()
    with pytest.raises(ModelError, match="is missing"):
        verify_model(tmp_path, "tiny-model")
    with pytest.raises(ModelError, match="no manifest"):
        verify_model(tmp_path, "other-model")


def test_invalid_manifest_names_the_field(tmp_path: Path) -> None:
    write_model(tmp_path, b"0.5", sha256="abc")
    with pytest.raises(ModelError, match="sha256"):
        verify_model(tmp_path, "tiny-model")


@pytest.mark.parametrize(
    ("plugin", "words"),
    [
        ("NoAlgorithm", "declares no 'algorithm'; it must be a dicomnode.protocol.Algorithm"),
        ("LooseInput", "'input' is tuple, not a dicomnode.protocol.InputSpec"),
    ],
)
def test_a_pipeline_without_its_declarations_is_refused(plugin: str, words: str) -> None:
    registry = PipelineRegistry.discover([f"tests.runner.faulty:{plugin}"])
    name = {"NoAlgorithm": "test-no-algorithm", "LooseInput": "test-loose-input"}[plugin]
    with pytest.raises(PipelineNotFoundError, match=re.escape(words)):
        registry.create(name)
