"""The ``monai-bundle`` pipeline on a tiny bundle folder built by each test.

The bundle is what a site would copy from the model zoo, shrunk: metadata
with ``channel_def``, an inference config with ``network_def`` (a two-level
UNet), ``preprocessing`` and a ``SlidingWindowInferer``, and random weights
saved with ``torch.save(network.state_dict())``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from monai.networks.nets import UNet

from dicomnode.jobs import JobState
from dicomnode.protocol import InputRefused, PipelineResult, Volume
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Series, write_ct_series
from pipelines.monai_bundle import MonaiBundlePipeline
from pipelines.monai_bundle.bundle import BundleError
from pipelines.monai_bundle.orientation import INDEX_ORDER, Reorientation
from tests.conftest import open_store
from tests.helpers import store_statuses, storescu, wait_for
from tests.pipelines.test_ct_lung import make_volume

NETWORK_DEF = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def write_bundle(
    root: Path,
    *,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    sha256: str | None = None,
) -> Path:
    """A bundle folder at ``root`` with random weights; returns ``root``."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "name": "Tiny spleen CT segmentation",
        "version": "0.3.1",
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "format": "hounsfield", "modality": "CT",
                          "num_channels": 1, "spatial_shape": [32, 32, 32]}
            },
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                         "channel_def": {"0": "background", "1": "spleen"}}
            },
        },
    }  # fmt: skip
    meta.update(metadata or {})
    (root / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    inference = {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [10.0, 10.0, 5.0]},
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57,
                 "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True},
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32],
                    "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    torch.manual_seed(seed)
    network = UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"})  # type: ignore[arg-type]
    torch.save(network.state_dict(), root / "models" / "model.pt")
    if sha256 is not None:
        (root / "models" / "model.pt.sha256").write_text(f"{sha256}  model.pt\n")
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "spleen_ct_segmentation")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Series, Volume]:
    series = write_ct_series(tmp_path_factory.mktemp("ct"), slices=24, rows=48, columns=48)
    return series, load_series(series.paths)


def run_bundle(bundle: Path, volume: Volume) -> PipelineResult:
    pipeline = MonaiBundlePipeline()
    pipeline.configure({"bundle": str(bundle)})
    pipeline.load("cpu")
    return pipeline.run(volume, "cpu")


def test_the_bundle_runs_end_to_end_in_the_volume_grid(
    bundle: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    result = run_bundle(bundle, volume)
    assert result.label_map is not None
    assert result.label_map.shape == volume.array.shape
    assert result.label_map.dtype == np.uint8
    assert set(np.unique(result.label_map).tolist()) <= {0, 1}
    result.check_grid(volume)
    sha256 = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert [(m.name, m.version, m.sha256) for m in result.models] == [
        ("Tiny spleen CT segmentation", "0.3.1", sha256)
    ]
    assert "Tiny spleen CT segmentation 0.3.1" in result.summary
    spleen = int((result.label_map == 1).sum())
    assert spleen > 0, "the seeded random network marks some voxels"
    (segment,) = result.segments
    assert (segment.label, segment.name, segment.type.value) == (1, "spleen", "78961009")
    assert segment.category.value == "91723000"
    (volume_ml,) = result.measurements
    assert (volume_ml.concept.value, volume_ml.unit.value) == ("118565006", "mL")
    assert volume_ml.segment_label == 1
    assert volume_ml.value == pytest.approx(spleen * volume.voxel_volume_ml)
    assert f"spleen {volume_ml.value:.1f} mL" in result.summary


def test_the_prediction_follows_the_network_voxel_for_voxel(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    """A bundle without resampling: the label map is the network's argmax on
    the RAS array, turned back; computed here independently of the pipeline."""
    root = write_bundle(tmp_path / "b", seed=3)
    config = json.loads((root / "configs" / "inference.json").read_text())
    transforms = config["preprocessing"]["transforms"]
    config["preprocessing"]["transforms"] = [
        t for t in transforms if "Spacing" not in t["_target_"]
    ]
    config["inferer"] = {"_target_": "SimpleInferer"}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    _, volume = ct
    result = run_bundle(root, volume)

    network = UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"})  # type: ignore[arg-type]
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    network.eval()
    # axial, LPS directions (1,0,0), (0,1,0), slices +z: RAS = columns reversed,
    # rows reversed, slices as they are
    ras = volume.array.transpose(2, 1, 0)[::-1, ::-1, :]
    scaled = np.clip((ras + 57.0) / (164.0 + 57.0), 0.0, 1.0)
    with torch.inference_mode():
        logits = network(torch.as_tensor(np.ascontiguousarray(scaled))[None, None])
    expected = logits[0].argmax(0).numpy().astype(np.uint8)[::-1, ::-1, :].transpose(2, 1, 0)
    assert result.label_map is not None
    assert np.array_equal(result.label_map, expected)
    assert 0 < int(expected.sum()) < expected.size, "the random network should mark some voxels"


@pytest.mark.parametrize(
    ("directions", "axcodes"),
    [
        (((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), "RAS"),  # axial, feet first
        (((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)), "RAS"),  # axial, head first
        (((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)), "RAS"),  # sagittal
        (((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)), "LPS"),  # coronal
        (((0.96, 0.28, 0.0), (-0.28, 0.96, 0.0), (0.0, 0.0, 1.0)), "RAS"),  # oblique
        (((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), INDEX_ORDER),
    ],
)
def test_the_reorientation_round_trips_an_asymmetric_array(
    directions: tuple[tuple[float, float, float], ...], axcodes: str
) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    row, column, slice_ = directions
    volume = make_volume(
        array, row_direction=row, column_direction=column, slice_direction=slice_,
        spacing=(5.0, 2.0, 1.0),
    )  # fmt: skip
    turn = Reorientation.of(volume, axcodes)
    turned = turn.forward(array)
    assert sorted(turned.shape) == [2, 3, 4]
    back = turn.backward(turned.astype(np.uint8))
    assert back.shape == array.shape and back.flags.c_contiguous
    assert np.array_equal(back, array.astype(np.uint8))
    # the spacing follows the axes
    sizes = {2: 5.0, 3: 2.0, 4: 1.0}
    assert turn.spacing(volume.spacing) == tuple(sizes[n] for n in turned.shape)


def test_the_reorientation_puts_the_patient_in_ras() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    axial = make_volume(array)  # LPS: columns +x (left), rows +y (posterior), slices +z (head)
    turned = Reorientation.of(axial, "RAS").forward(array)
    assert turned.shape == (4, 3, 2)
    # RAS index 0 is the patient's rightmost column, the most anterior row, the lowest slice
    assert turned[0, 0, 0] == array[0, 2, 3]
    assert turned[3, 2, 1] == array[1, 0, 0]
    # a sagittal series: columns run posterior... (row_direction 0,1,0), rows down
    sagittal = make_volume(
        array, row_direction=(0.0, 1.0, 0.0), column_direction=(0.0, 0.0, -1.0),
        slice_direction=(1.0, 0.0, 0.0),
    )  # fmt: skip
    turn = Reorientation.of(sagittal, "RAS")
    assert turn.axes == (0, 2, 1) and turn.flips == (True, True, True)


def test_a_declared_checksum_is_checked(tmp_path: Path, ct: tuple[Series, Volume]) -> None:
    good = write_bundle(tmp_path / "good")
    digest = hashlib.sha256((good / "models" / "model.pt").read_bytes()).hexdigest()
    (good / "models" / "model.pt.sha256").write_text(f"{digest}  model.pt\n")
    assert run_bundle(good, ct[1]).models[0].sha256 == digest

    bad = write_bundle(tmp_path / "bad", sha256="0" * 64)
    pipeline = MonaiBundlePipeline(bad)
    with pytest.raises(BundleError, match="declares 0000"):
        pipeline.load("cpu")

    zoo = write_bundle(tmp_path / "zoo")
    (zoo / "large_files.yml").write_text(
        'large_files:\n  - path: "models/model.pt"\n    url: "https://example.invalid/m.pt"\n'
        '    hash_val: "00112233445566778899aabbccddeeff"\n    hash_type: "md5"\n'
    )
    with pytest.raises(BundleError, match="md5"):
        MonaiBundlePipeline(zoo).load("cpu")


def test_without_a_bundle_load_names_the_setting() -> None:
    pipeline = MonaiBundlePipeline()
    with pytest.raises(InputRefused, match=r"runner\.pipelines\.monai-bundle\.bundle"):
        pipeline.load("cpu")


def test_a_broken_bundle_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        MonaiBundlePipeline(tmp_path / "nowhere").load("cpu")
    root = write_bundle(tmp_path / "b")
    (root / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"models/model\.pt"):
        MonaiBundlePipeline(root).load("cpu")
    other = write_bundle(tmp_path / "c")
    small = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,))
    torch.save(small.state_dict(), other / "models" / "model.pt")
    with pytest.raises(BundleError, match="does not fit network_def"):
        MonaiBundlePipeline(other).load("cpu")


def test_the_bundle_modality_is_the_input_contract(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    meta_mr = {
        "network_data_format": {
            "inputs": {"image": {"modality": "MRI"}},
            "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "bg", "1": "liver"}}},
        }
    }
    pipeline = MonaiBundlePipeline(write_bundle(tmp_path / "mr", metadata=meta_mr))
    assert "CT" in pipeline.input.modalities
    pipeline.load("cpu")
    assert pipeline.input.modalities == frozenset({"MR"})
    with pytest.raises(InputRefused, match="takes MR, not CT"):
        pipeline.run(ct[1], "cpu")


@pytest.mark.peers
def test_the_result_becomes_a_valid_seg_and_sr(
    bundle: Path, ct: tuple[Series, Volume], tmp_path: Path
) -> None:
    from dicomnode.results.common import sources_in_volume_order
    from dicomnode.results.seg import build_segmentation
    from dicomnode.results.sr import build_report
    from tests.results.helpers import assert_valid, context, save

    series, volume = ct
    result = run_bundle(write_bundle(tmp_path / "seeded", seed=3), volume)
    assert result.segments, "seed 3 marks some spleen voxels"
    sources = sources_in_volume_order(volume, [pydicom.dcmread(p) for p in series.paths])
    ctx = context(series.paths, tmp_path / "out", "monai-bundle", "1.0.0")
    seg = build_segmentation(result, volume, sources, ctx)
    assert seg is not None
    report = build_report(result, volume, sources, ctx, seg)
    assert report is not None
    assert_valid(save(seg, tmp_path / "out" / "seg.dcm"))
    assert_valid(save(report, tmp_path / "out" / "sr.dcm"))
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.SegmentSequence[0].SegmentLabel == "spleen"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    parameters = str(algorithm.AlgorithmParameters)
    assert algorithm.AlgorithmName == "monai-bundle"
    assert "Tiny spleen CT segmentation" in parameters and "0.3.1" in parameters
    assert result.models[0].sha256 in parameters


def node_settings(make_settings: Any, tmp_path: Path, pipelines: dict[str, Any]) -> Any:
    return make_settings(
        assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
        runner={
            "enabled": True,
            "workers": 1,
            "device": "cpu",
            "threads": 1,
            "poll_seconds": 0.1,
            "max_attempts": 2,
            "retry_backoff_seconds": 0,
            "models_dir": str(tmp_path / "models"),
            "pipelines": pipelines,
        },
        routing={
            "rules": [
                {"name": "ct", "match": {"series": {"Modality": {"equals": "CT"}}},
                 "pipeline": "monai-bundle"}
            ]
        },
    )  # fmt: skip


def pushed_run(settings: Any, start_node: Any, series: Series) -> Any:
    start_node(settings)
    statuses = store_statuses(storescu(series.paths, settings.node.port).stderr)
    assert statuses == ["Success"] * len(series.paths)
    store = open_store(settings)

    def settled() -> Any:
        runs = [j for j in store.jobs(study_instance_uid=series.study_uid) if j.kind == "run"]
        finished = (JobState.DONE, JobState.RESULTS_WRITTEN, JobState.DEAD)
        return runs[0] if len(runs) == 1 and runs[0].state in finished else None

    return store, wait_for(settled, 120, "the monai-bundle run to finish", interval=0.2)


@pytest.mark.peers
@pytest.mark.slow
def test_a_pushed_ct_runs_the_configured_bundle(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    root = write_bundle(tmp_path / "bundles" / "spleen", seed=3)
    series = write_ct_series(tmp_path / "ct", slices=24, rows=48, columns=48)
    settings = node_settings(make_settings, tmp_path, {"monai-bundle": {"bundle": str(root)}})
    store, job = pushed_run(settings, start_node, series)
    assert job.state in (JobState.DONE, JobState.RESULTS_WRITTEN), job.reason
    assert "Tiny spleen CT segmentation 0.3.1" in (job.reason or "")
    objects = sorted(Path(i.path).name.split("_")[0] for i in store.outbox(job.id))
    if not objects:  # no destination: the objects wait in the outbox folder
        folder = settings.storage.spool_path / "outbox" / f"job-{job.id}"
        objects = sorted(p.name.split("_")[0] for p in folder.glob("*.dcm"))
    assert "SEG" in objects, objects


@pytest.mark.peers
@pytest.mark.slow
def test_a_run_without_a_bundle_is_dead_with_the_setting_named(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)
    settings = node_settings(make_settings, tmp_path, {})
    _, job = pushed_run(settings, start_node, series)
    assert job.state == JobState.DEAD
    assert job.attempts == 1  # a configuration cannot be fixed by retrying
    assert "runner.pipelines.monai-bundle.bundle" in (job.reason or "")
