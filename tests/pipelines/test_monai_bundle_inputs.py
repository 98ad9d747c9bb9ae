"""Multi-input MONAI bundles: series picked by role, resampled onto the run's grid.

The bundle takes two channels (``t1``, ``flair``); its network, a 1x1x1
convolution with set weights, marks a voxel where both series are above
500 HU, so the label map is known from the two series themselves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from dicomnode.errors import InputError
from dicomnode.protocol import Volume
from dicomnode.runner.inputs import pick_role_series, resample_onto
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Series, write_ct_series
from pipelines.monai_bundle import MonaiBundlePipeline
from tests.pipelines.test_nnunet import with_bright_block

ROLES = {"t1": "^T1$", "flair": "^FLAIR$"}


def write_study(root: Path) -> tuple[Series, Series]:
    """A study of two series in one frame of reference: T1 bright on slices 3-6,
    FLAIR on slices 5-8 (same block), so both are bright on slices 5 and 6."""
    study, frame = generate_uid(), generate_uid()
    made = []
    for name, slices in (("T1", range(3, 7)), ("FLAIR", range(5, 9))):
        series = write_ct_series(root / name, slices=10, rows=32, columns=32, study_uid=study)
        with_bright_block(series, slices)
        for path in series.paths:
            ds = pydicom.dcmread(path)
            ds.SeriesDescription = name
            ds.FrameOfReferenceUID = frame
            ds.save_as(path, enforce_file_format=True)
        made.append(series)
    return made[0], made[1]


def write_bundle(root: Path, channels: int = 2) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "name": "Tiny two-sequence lesion",
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": "CT", "num_channels": channels}},
            "outputs": {"pred": {"type": "image", "num_channels": 2,
                                 "channel_def": {"0": "background", "1": "lesion"}}},
        },
    }  # fmt: skip
    (root / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    inference = {
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": channels,
                        "out_channels": 2, "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000,
             "a_max": 1000, "b_min": 0.0, "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    network = torch.nn.Conv3d(channels, 2, 1)
    with torch.no_grad():
        network.weight.zero_()
        network.weight[1] = 100.0
        network.bias.copy_(torch.tensor([0.0, -150.0]))  # a + b above 1.5: both above 500 HU
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def expected_lesion(t1: Volume, flair: Volume) -> np.ndarray:
    return ((t1.array > 500) & (flair.array > 500)).astype(np.uint8)


def test_the_roles_series_are_the_bundles_channels(tmp_path: Path) -> None:
    t1_series, flair_series = write_study(tmp_path / "study")
    files = [str(p) for p in (*t1_series.paths, *flair_series.paths)]
    picked = pick_role_series(ROLES, files)
    assert picked == {
        "t1": sorted(map(str, t1_series.paths)),
        "flair": sorted(map(str, flair_series.paths)),
    }
    t1 = load_series(t1_series.paths)
    inputs = {role: resample_onto(load_series(f), t1) for role, f in picked.items()}
    pipeline = MonaiBundlePipeline()
    pipeline.configure({"bundle": str(write_bundle(tmp_path / "b")), "inputs": ROLES})
    pipeline.load("cpu")
    result = pipeline.run_inputs(t1, inputs, "cpu")
    assert result.label_map is not None
    expected = expected_lesion(t1, inputs["flair"])
    assert np.array_equal(result.label_map, expected)
    assert set(np.flatnonzero(expected.reshape(10, -1).any(1))) == {5, 6}
    assert [s.name for s in result.segments] == ["lesion"]
    with pytest.raises(InputError, match=r"input role 't2': no series .* matching '\^T2\$'"):
        pick_role_series({"t2": "^T2$"}, files)


def test_resampling_onto_another_grid_follows_patient_coordinates(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=6, rows=20, columns=24)
    grid = load_series(series.paths)
    # the same voxels stored the other way round along the slices ...
    last = np.asarray(grid.origin) + (grid.array.shape[0] - 1) * grid.spacing[0] * np.asarray(
        grid.slice_direction
    )
    reversed_ = replace(
        grid,
        array=np.ascontiguousarray(grid.array[::-1]),
        origin=tuple(float(v) for v in last),
        slice_direction=tuple(-float(v) for v in grid.slice_direction),
    )
    assert np.array_equal(resample_onto(reversed_, grid).array, grid.array)
    # ... and with rows and columns swapped
    swapped = replace(
        grid,
        array=np.ascontiguousarray(grid.array.transpose(0, 2, 1)),
        row_direction=grid.column_direction,
        column_direction=grid.row_direction,
        spacing=(grid.spacing[0], grid.spacing[2], grid.spacing[1]),
    )
    assert np.allclose(resample_onto(swapped, grid).array, grid.array, atol=1e-3)
    with pytest.raises(InputError, match="another Frame of Reference"):
        resample_onto(replace(grid, frame_of_reference_uid="1.2.3"), grid)


def test_a_bundle_of_several_channels_needs_one_role_per_channel(tmp_path: Path) -> None:
    from dicomnode.runner.requirements import pipeline_setup_problems

    root = write_bundle(tmp_path / "b")
    (problem,) = pipeline_setup_problems(MonaiBundlePipeline(), {"bundle": str(root)}, tmp_path)
    assert "takes 2 input channels" in problem
    assert "runner.pipelines.monai-bundle.inputs names 0 role(s)" in problem
    options = {"bundle": str(root), "inputs": ROLES}
    assert pipeline_setup_problems(MonaiBundlePipeline(), options, tmp_path) == []


@pytest.mark.peers
@pytest.mark.slow
def test_a_pushed_two_series_study_gives_a_seg_of_both_on_the_rules_series(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    from dicomnode.jobs import JobState
    from tests.conftest import open_store
    from tests.export.mllp_ris import running_ris
    from tests.helpers import storescu, wait_for
    from tests.orthanc import Orthanc
    from tests.pipelines.test_exported import fetch_results
    from tests.results.helpers import assert_sr_valid, assert_valid

    t1_series, flair_series = write_study(tmp_path / "study")
    root = write_bundle(tmp_path / "bundle")
    orthanc = Orthanc(tmp_path / "orthanc")
    with running_ris("AA") as ris:
        settings = make_settings(
            assembly={"quiet_seconds": 1.0, "poll_seconds": 0.1},
            runner={
                "enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1,
                "pipelines": {"monai-bundle": {"bundle": str(root), "inputs": ROLES}},
            },
            routing={"rules": [{
                "name": "lesion", "match": {"series": {"Modality": {"equals": "CT"}}},
                "series": {"pick": "description_regex", "regex": "^T1$"},
                "pipeline": "monai-bundle", "destinations": ["pacs"], "notify": ["ris"],
            }]},
            destinations={
                "pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1",
                         "port": orthanc.dicom_port, "timeout_seconds": 10},
                "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
            },
            export={"poll_seconds": 0.2, "backoff_seconds": 1, "max_backoff_seconds": 2},
        )  # fmt: skip
        try:
            orthanc.start()
            start_node(settings)
            paths = [*t1_series.paths, *flair_series.paths]
            assert storescu(paths, settings.node.port).returncode == 0
            store = open_store(settings)

            def finished() -> Any:
                runs = [j for j in store.jobs() if j.kind == "run"]
                ok = runs and runs[0].state in (JobState.DONE, JobState.DEAD)
                return runs[0] if ok else None

            run = wait_for(finished, 120, "the bundle run to finish", interval=0.3)
            assert run.state == JobState.DONE, run.reason
            assert run.series_instance_uid == t1_series.series_uid
            wait_for(lambda: ris.received, 30, "the ORU at the RIS", interval=0.2)
            files = fetch_results(orthanc, tmp_path)
        finally:
            orthanc.stop()
    assert sorted(files) == ["SEG", "SR"]
    assert_valid(files["SEG"])
    assert_sr_valid(files["SR"])
    seg = pydicom.dcmread(files["SEG"])
    t1, flair = load_series(t1_series.paths), load_series(flair_series.paths)
    expected = expected_lesion(t1, flair)
    index = {s.sop_instance_uid: i for i, s in enumerate(t1.sources)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), 32, 32)
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(frame.astype(bool), expected[index[source]] == 1)
        seen.add(index[source])
    assert seen == {5, 6}
    assert "lesion" in ris.received[0]
