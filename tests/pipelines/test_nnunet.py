"""The ``nnunet`` pipeline on a tiny nnU-Net v2 folder built by each test.

The folder (:mod:`tests.pipelines.nnunet_folder`) holds a network whose
output is known voxel for voxel (labels by Hounsfield thresholds), so the
label map, and the SEG frames made from it, can be checked against the
source slices themselves.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.errors import ModelError
from dicomnode.jobs import JobState
from dicomnode.protocol import InputRefused, Measurement, Volume
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Series, write_ct_series, write_oblique_ct_series
from pipelines.nnunet import NnUNetPipeline
from pipelines.nnunet.codes import TOTALSEGMENTATOR, read_code_map
from pipelines.nnunet.orientation import Reorientation
from tests.pipelines.nnunet_folder import expected_labels, write_model_folder

FOLDER = "Dataset901_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres"

# a tilted stack: 20 degrees about the patient's x axis, then 30 about z
_X, _Z = np.radians(20.0), np.radians(30.0)
ROTATION = np.array(
    [[np.cos(_Z), -np.sin(_Z), 0.0], [np.sin(_Z), np.cos(_Z), 0.0], [0.0, 0.0, 1.0]]
) @ np.array([[1.0, 0.0, 0.0], [0.0, np.cos(_X), -np.sin(_X)], [0.0, np.sin(_X), np.cos(_X)]])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(
    models_dir: Path, *, folds: tuple[int, ...] = (0,), name: str = "tiny", **kwargs: Any
) -> Path:
    """The model folder under ``models_dir`` and its manifest ``<name>.yaml``."""
    root = write_model_folder(models_dir / FOLDER, folds=folds, **kwargs)
    first, *others = [root / f"fold_{f}" / "checkpoint_final.pth" for f in folds]
    files = [root / "plans.json", root / "dataset.json", *others]
    lines = [
        f"name: {name}",
        "version: 0.1.0",
        f"file: {first.relative_to(models_dir)}",
        f"sha256: {sha256(first)}",
        "intended_use: Tests only.",
        "files:",
        *(f"  - {{file: {p.relative_to(models_dir)}, sha256: {sha256(p)}}}" for p in files),
    ]
    manifest = models_dir / f"{name}.yaml"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def with_bright_block(series: Series, slices: range) -> None:
    """Rewrite some slices of ``series`` with a 600 HU block (label 2) in a 250 HU
    one (label 1), off centre so a flip would move them."""
    for index in slices:
        ds = pydicom.dcmread(series.paths[index])
        pixels = ds.pixel_array.copy()
        rows, columns = pixels.shape
        stored = int(250 - float(ds.RescaleIntercept))
        pixels[rows // 5 : rows // 2, columns // 6 : columns // 3] = stored
        pixels[rows // 4 : rows // 3, columns // 5 : columns // 4] = int(600 - ds.RescaleIntercept)
        ds.PixelData = pixels.astype(pixels.dtype).tobytes()
        ds.save_as(series.paths[index], enforce_file_format=True)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Series, Volume]:
    series = write_ct_series(tmp_path_factory.mktemp("ct"), slices=16, rows=40, columns=40)
    with_bright_block(series, range(3, 9))
    return series, load_series(series.paths)


def loaded(models_dir: Path, name: str = "tiny", **options: Any) -> NnUNetPipeline:
    pipeline = NnUNetPipeline()
    pipeline.configure({"model": name, **options})
    pipeline.load("cpu", {name: verify_model(models_dir, name)})
    return pipeline


# --- orientation: the array nnU-Net gets is what its own readers would give ---------------------


@pytest.mark.parametrize("oblique", [False, True])
def test_dicom_order_is_what_simpleitk_reads_from_the_series(tmp_path: Path, oblique: bool) -> None:
    if oblique:
        series = write_oblique_ct_series(
            tmp_path / "ct", slices=6, rows=20, columns=24, rotation=ROTATION
        )
    else:
        series = write_ct_series(
            tmp_path / "ct", slices=6, rows=20, columns=24, order=[6, 2, 4, 1, 5, 3]
        )
    volume = load_series(series.paths)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader().GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    image = reader.Execute()
    turn = Reorientation.of(volume, "dicom")
    assert np.array_equal(turn.forward(volume.array), sitk.GetArrayFromImage(image))
    assert turn.spacing(volume.spacing) == pytest.approx(list(image.GetSpacing())[::-1])


@pytest.mark.parametrize("orientation", ["RAS", "LAS", "LPI"])
@pytest.mark.parametrize("which", ["axial", "oblique"])
def test_axis_codes_give_what_nibabel_gives_for_a_nifti_of_the_series(
    tmp_path: Path, orientation: str, which: str
) -> None:
    """The series written as NIfTI by SimpleITK, reoriented by nibabel to the axis
    codes and read as nnU-Net's nibabel readers read (transposed to k, j, i)."""
    if which == "oblique":
        series = write_oblique_ct_series(
            tmp_path / "ct", slices=6, rows=20, columns=24, rotation=ROTATION
        )
    else:
        series = write_ct_series(tmp_path / "ct", slices=6, rows=20, columns=24)
    volume = load_series(series.paths)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader().GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "ct.nii.gz"))
    image = nib.load(tmp_path / "ct.nii.gz")
    current = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.axcodes2ornt(tuple(orientation))
    turned = image.as_reoriented(nib.orientations.ornt_transform(current, target))
    assert nib.aff2axcodes(turned.affine) == tuple(orientation)
    reference = np.asarray(turned.dataobj).transpose(2, 1, 0)
    spacing = [float(z) for z in turned.header.get_zooms()][::-1]
    turn = Reorientation.of(volume, orientation)
    assert np.array_equal(turn.forward(volume.array), reference)
    assert turn.spacing(volume.spacing) == pytest.approx(spacing, rel=1e-4)
    assert np.array_equal(turn.backward(turn.forward(volume.array).astype(np.uint8)),
                          volume.array.astype(np.uint8))  # fmt: skip


# --- the pipeline ------------------------------------------------------------------------------


def test_the_prediction_is_the_models_voxel_for_voxel_in_the_source_grid(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    """Plans at the series' spacing: no resampling, so the label map is the
    network's thresholds of each source voxel, exactly."""
    _, volume = ct
    write_manifest(tmp_path, spacing=(2.5, 10.0, 10.0))
    result = loaded(tmp_path).run(volume, "cpu")
    assert result.label_map is not None and result.label_map.shape == volume.array.shape
    expected = expected_labels(volume.array)
    assert np.array_equal(result.label_map, expected)
    assert set(np.flatnonzero(result.label_map.reshape(16, -1).any(1))) == set(range(3, 9))
    liver, bone = result.segments
    assert (liver.label, liver.name, liver.type.value, liver.category.value) == (
        1, "liver", "10200004", "91723000",
    )  # fmt: skip
    # a label the code map lacks: its name, coded Tissue, and said in the summary
    assert (bone.label, bone.name, bone.type.value, bone.category.value) == (
        2, "bone", "85756007", "85756007",
    )  # fmt: skip
    assert "Not coded (no entry in the code map): bone" in result.summary
    (model,) = result.models
    checkpoint = tmp_path / FOLDER / "fold_0" / "checkpoint_final.pth"
    assert (model.name, model.version, model.sha256) == ("tiny", "0.1.0", sha256(checkpoint))
    volume_ml = {m.segment_label: m.value for m in result.measurements}
    assert volume_ml[1] == pytest.approx(int((expected == 1).sum()) * volume.voxel_volume_ml)


def test_folds_transpose_and_mirroring_follow_the_options(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    # plans' spacing is in the transposed order: rows, columns, slices
    write_manifest(tmp_path, folds=(0, 1), transpose=(1, 2, 0), spacing=(10.0, 10.0, 2.5))
    pipeline = loaded(tmp_path, folds=[1], mirroring=True, tile_step_size=0.7, orientation="LPS")
    assert pipeline._predictor.use_mirroring is True
    assert pipeline._predictor.tile_step_size == 0.7
    assert len(pipeline._predictor.list_of_parameters) == 1
    result = pipeline.run(volume, "cpu")
    assert result.label_map is not None
    assert np.array_equal(result.label_map, expected_labels(volume.array))
    both = loaded(tmp_path)
    assert len(both._predictor.list_of_parameters) == 2
    with pytest.raises(InputRefused, match=r"fold\(s\) 3 requested"):
        loaded(tmp_path, folds=[3])


def test_plans_at_another_spacing_resample_there_and_back(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    write_manifest(tmp_path, spacing=(2.5, 5.0, 5.0))
    result = loaded(tmp_path).run(volume, "cpu")
    assert result.label_map is not None and result.label_map.shape == volume.array.shape
    expected = expected_labels(volume.array)
    for label in (1, 2):
        a, b = result.label_map == label, expected == label
        dice = 2 * int((a & b).sum()) / (int(a.sum()) + int(b.sum()))
        assert dice > 0.9, (label, dice)
    assert set(np.flatnonzero(result.label_map.reshape(16, -1).any(1))) == set(range(3, 9))


def test_a_wrong_sha256_or_an_unlisted_file_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path, folds=(0, 1))
    plans = tmp_path / FOLDER / "plans.json"
    plans.write_text(plans.read_text().replace('"batch_size": 2', '"batch_size": 3'))
    with pytest.raises(ModelError, match=r"plans\.json has SHA-256 .* refusing to load it"):
        verify_model(tmp_path, "tiny")
    write_manifest(tmp_path, folds=(0, 1))
    checkpoint = tmp_path / FOLDER / "fold_1" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth has SHA-256"):
        verify_model(tmp_path, "tiny")
    # dataset.json left out of the manifest: the folder is not loaded
    write_manifest(tmp_path)
    text = manifest.read_text()
    manifest.write_text("\n".join(line for line in text.splitlines() if "dataset.json" not in line))
    pipeline = NnUNetPipeline()
    pipeline.configure({"model": "tiny"})
    with pytest.raises(InputRefused, match=r"dataset\.json is not in the manifest's files"):
        pipeline.load("cpu", {"tiny": verify_model(tmp_path, "tiny")})


def test_configuration_errors_name_the_setting() -> None:
    pipeline = NnUNetPipeline()
    with pytest.raises(InputRefused, match="no option bundle"):
        pipeline.configure({"bundle": "/x"})
    with pytest.raises(InputRefused, match=r"runner\.pipelines\.nnunet\.nnunet\.model"):
        pipeline.load("cpu", {})
    with pytest.raises(ValueError, match="orientation"):
        pipeline.configure({"orientation": "RAR"})


def test_the_shipped_code_map_is_valid_and_a_broken_one_is_named(tmp_path: Path) -> None:
    codes = read_code_map(TOTALSEGMENTATOR)
    assert codes.meaning("spleen").type.value == "78961009"
    assert codes.meaning("vertebrae_L1").type.value == "66794005"
    assert codes.meaning("kidney_cyst_left").region is not None
    assert not codes.meaning("heart_myocardium").mapped
    assert len(codes.labels) > 100
    bad = tmp_path / "codes.yaml"
    bad.write_text("labels:\n  spleen: {type: {value: '78961009', scheme: SCT}}\n")
    with pytest.raises(InputRefused, match=r"labels\.spleen\.type: no meaning"):
        read_code_map(bad)


# --- through the node: storescu in, SEG + SR in Orthanc, ORU at the RIS -------------------------


def walk(dataset: Any) -> list[Any]:
    """Every content item of an SR, depth first."""
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(walk(item))
    return items


def nnunet_plugins() -> list[str]:
    """The pipeline as a plugin where the installed package does not declare it yet."""
    installed = {e.name for e in entry_points(group="dicomnode.pipelines")}
    return [] if "nnunet" in installed else ["pipelines.nnunet:NnUNetPipeline"]


@pytest.mark.peers
@pytest.mark.slow
def test_a_pushed_ct_gives_a_seg_on_the_right_slices_a_valid_sr_and_an_oru(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    import urllib.request

    from tests.conftest import open_store
    from tests.export.mllp_ris import running_ris
    from tests.helpers import storescu, wait_for
    from tests.orthanc import Orthanc
    from tests.results.helpers import assert_sr_valid, assert_valid

    models = tmp_path / "models"
    # at the series' spacing (exact labels); a paired structure, so the side is coded
    labels = {"background": 0, "kidney_left": 1, "bone": 2}
    write_manifest(models, spacing=(2.5, 10.0, 10.0), labels=labels)
    series = write_ct_series(tmp_path / "ct", slices=16, rows=40, columns=40)
    with_bright_block(series, range(3, 9))
    orthanc = Orthanc(tmp_path / "orthanc")
    with running_ris("AA") as ris:
        settings = make_settings(
            assembly={"quiet_seconds": 1.0, "poll_seconds": 0.1},
            runner={
                "enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1,
                "models_dir": str(models), "plugins": nnunet_plugins(),
                "pipelines": {"nnunet": {"nnunet": {"model": "tiny", "orientation": "RAS"}}},
            },
            routing={"rules": [{
                "name": "ct", "match": {"series": {"Modality": {"equals": "CT"}}},
                "pipeline": "nnunet", "destinations": ["pacs"], "notify": ["ris"],
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
            assert storescu(series.paths, settings.node.port).returncode == 0
            store = open_store(settings)

            def finished() -> Any:
                runs = [j for j in store.jobs() if j.kind == "run"]
                ok = runs and runs[0].state in (JobState.DONE, JobState.DEAD)
                return runs[0] if ok else None

            run = wait_for(finished, 180, "the nnunet run to finish", interval=0.3)
            assert run.state == JobState.DONE, run.reason
            wait_for(lambda: ris.received, 30, "the ORU at the RIS", interval=0.2)
            instances = orthanc.get("/instances")
            files: dict[str, Path] = {}
            for instance in instances:
                tags = orthanc.get(f"/instances/{instance}/simplified-tags")
                if tags["Modality"] in ("SEG", "SR"):
                    path = tmp_path / f"{tags['Modality']}.dcm"
                    with urllib.request.urlopen(orthanc.url(f"/instances/{instance}/file")) as r:
                        path.write_bytes(r.read())
                    files[tags["Modality"]] = path
        finally:
            orthanc.stop()
    assert sorted(files) == ["SEG", "SR"]
    assert_valid(files["SEG"])
    assert_sr_valid(files["SR"])
    seg = pydicom.dcmread(files["SEG"])
    assert seg.StudyInstanceUID == series.study_uid
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    kidney = next(s for s in seg.SegmentSequence if s.SegmentLabel == "kidney_left")
    kidney_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeValue == "64033007"
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    sr = pydicom.dcmread(files["SR"])
    sides = [
        (str(item.ConceptNameCodeSequence[0].CodeValue), str(item.ConceptCodeSequence[0].CodeValue))
        for item in walk(sr)
        if item.get("ValueType") == "CODE"
        and item.ConceptNameCodeSequence[0].CodeValue == "272741003"
    ]
    assert ("272741003", "7771000") in sides, "the finding site's laterality: Left"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "nnunet"
    checkpoint = models / FOLDER / "fold_0" / "checkpoint_final.pth"
    assert sha256(checkpoint) in str(algorithm.AlgorithmParameters)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # AI
    assert sorted(numbers.values()) == ["bone", "kidney_left"]
    # every frame lies on its source slice and holds exactly what the model makes of it
    volume = load_series(series.paths)
    expected = expected_labels(volume.array)
    index = {s.sop_instance_uid: i for i, s in enumerate(volume.sources)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), 40, 40)
    seen: dict[str, set[int]] = {"kidney_left": set(), "bone": set()}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        name = numbers[number]
        value = labels[name]
        slice_index = index[source]
        assert np.array_equal(frame.astype(bool), expected[slice_index] == value), (
            name,
            slice_index,
        )
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        source_ds = pydicom.dcmread(series.paths[series.sop_uids.index(source)])
        assert position == pytest.approx([float(v) for v in source_ds.ImagePositionPatient])
        seen[name].add(slice_index)
    assert seen == {"kidney_left": set(range(3, 9)), "bone": set(range(3, 9))}
    oru = ris.received[0].replace("\n", "\r")
    assert "kidney_left" in oru


def test_config_check_names_a_wrong_hash_and_bad_settings(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from dicomnode.config.schema import RunnerConfig
    from dicomnode.runner.requirements import pipeline_setup_problems
    from dicomnode.runner.stage import pipeline_options

    write_manifest(tmp_path)
    config = RunnerConfig.model_validate(
        {"pipelines": {"nnunet": {"nnunet": {"model": "tiny", "folds": [0]}}}}
    )
    options = pipeline_options(config)["nnunet"]
    assert pipeline_setup_problems(NnUNetPipeline(), dict(options), tmp_path) == []
    (tmp_path / FOLDER / "dataset.json").write_text("{}")
    (problem,) = pipeline_setup_problems(NnUNetPipeline(), dict(options), tmp_path)
    assert "model 'tiny' 0.1.0: weights file dataset.json has SHA-256" in problem
    (problem,) = pipeline_setup_problems(NnUNetPipeline(), {}, tmp_path)
    assert "runner.pipelines.nnunet.nnunet.model" in problem
    with pytest.raises(ValidationError, match="folds"):
        RunnerConfig.model_validate(
            {"pipelines": {"nnunet": {"nnunet": {"model": "t", "folds": ["x"]}}}}
        )
    with pytest.raises(ValidationError, match="extra"):
        RunnerConfig.model_validate(
            {"pipelines": {"nnunet": {"nnunet": {"model": "t", "step": 1}}}}
        )


@pytest.mark.peers
def test_the_side_of_a_structure_and_of_a_region_are_valid_in_seg_and_sr(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    """``laterality`` modifies the type (kidney_left) or, with a region, the region
    (kidney_cyst_left); dciodvfy and PixelMed accept both."""
    from dicomnode.protocol import PipelineResult, Segment
    from dicomnode.results.common import sources_in_volume_order
    from dicomnode.results.seg import build_segmentation
    from dicomnode.results.sr import build_report
    from pipelines.nnunet.pipeline import MILLILITER, VOLUME
    from tests.results.helpers import assert_sr_valid, assert_valid, context, save

    series, volume = ct
    codes = read_code_map(TOTALSEGMENTATOR)
    labels = expected_labels(volume.array)
    segments = []
    for value, name in ((1, "kidney_left"), (2, "kidney_cyst_right")):
        meaning = codes.meaning(name)
        segments.append(
            Segment(value, name, meaning.category, meaning.type, meaning.region,
                    laterality=meaning.laterality)
        )  # fmt: skip
    result = PipelineResult(
        label_map=labels,
        segments=tuple(segments),
        measurements=tuple(Measurement(VOLUME, 1.0, MILLILITER, v) for v in (1, 2)),
        summary="sides",
    )
    sources = sources_in_volume_order(volume, [pydicom.dcmread(p) for p in series.paths])
    ctx = context(series.paths, tmp_path / "out", "nnunet", "1.0.0")
    seg = build_segmentation(result, volume, sources, ctx)
    assert seg is not None
    report = build_report(result, volume, sources, ctx, seg)
    assert report is not None
    assert_valid(save(seg, tmp_path / "out" / "seg.dcm"))
    assert_sr_valid(save(report, tmp_path / "out" / "sr.dcm"))
    kidney, cyst = seg.SegmentSequence
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert modifier[0].CodeValue == "7771000"
    region = cyst.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.AnatomicRegionModifierSequence[0].CodeValue) == (
        "64033007", "24028007",
    )  # fmt: skip
    assert (
        "SegmentedPropertyTypeModifierCodeSequence" not in cyst.SegmentedPropertyTypeCodeSequence[0]
    )


def test_the_manifest_helper_writes_a_manifest_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.nnunet.manifest import main

    root = write_model_folder(tmp_path / FOLDER, folds=(0, 2))
    argv = [str(tmp_path), str(root), "--name", "tiny", "--version", "1.0",
            "--intended-use", "Tests: only."]  # fmt: skip
    assert main(argv) == 0
    (tmp_path / "tiny.yaml").write_text(capsys.readouterr().out)
    model = verify_model(tmp_path, "tiny")
    assert model.path == (root / "fold_0" / "checkpoint_final.pth").resolve()
    assert {p.name for p in model.files} == {"plans.json", "dataset.json", "checkpoint_final.pth"}
    pipeline = NnUNetPipeline()
    pipeline.configure({"model": "tiny"})
    pipeline.check_setup({"tiny": model})
    (root / "plans.json").unlink()
    assert main(argv) == 2
    assert "no plans.json" in capsys.readouterr().err
