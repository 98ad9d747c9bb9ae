"""``cxr-classify``: preprocessing, refusals, and a tiny model trained on synthetic radiographs.

The training data are the synthetic phantom's chest radiograph (96x96 DX) with
noise, random gain and bit depth (12 or 16 bit) and both photometric
interpretations. A *nodule* is a bright disc planted in the upper or lower
zone of either lung, a *pneumothorax* a dark disc in the lower right lung;
each is present in about half of the images, independently. The unseen test
image has its nodule in the image's upper left (the patient's right lung). ``models/train_cxr.py``
trains a ``densenet-tiny`` at 64x64 on them in a few seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
import yaml
from numpy.typing import NDArray

from dicomnode.errors import ModelError
from dicomnode.protocol import (
    InputRefused,
    ModelFile,
    Pipeline,
    PipelineResult,
    ResultContext,
)
from dicomnode.results.oru import abnormal
from dicomnode.results.overlay import build_overlays
from dicomnode.results.sr import build_report
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import display_window, dx_projection, write_dx_image
from pipelines.cxr_classify import CXRClassifyPipeline
from pipelines.cxr_classify.pipeline import describe_region
from pipelines.cxr_classify.preprocess import fit, preprocess
from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
SIZE = 96  # source images
GRID = 64  # network input
NODULE_CENTRE = (27, 26)  # row, column in the source image: upper left lung
# Training nodules are in either lung, upper or lower zone, so the network must
# find the nodule itself rather than learn one place.
NODULE_SITES = ((27, 26), (62, 26), (27, 70), (60, 68))
NODULE_RADIUS = 7
PNEUMOTHORAX_CENTRE = (64, 70)  # lower right lung
PNEUMOTHORAX_RADIUS = 7
LABELS = ("nodule", "pneumothorax")
TRAINING_IMAGES = 64
TIMINGS: dict[str, float] = {}


# --- synthetic radiographs ------------------------------------------------------------------------


def disc(centre: tuple[float, float], radius: float) -> NDArray[np.bool_]:
    rows, columns = np.mgrid[:SIZE, :SIZE]
    return np.asarray((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2)


def radiograph(
    path: Path,
    rng: np.random.Generator,
    *,
    nodule: bool,
    pneumothorax: bool,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    jitter: int = 3,
    view_position: str = "PA",
    site: tuple[int, int] = NODULE_CENTRE,
) -> tuple[Path, tuple[int, int]]:
    """Write one DX image; return its path and the nodule's centre."""
    values = dx_projection(SIZE, SIZE).astype(np.float64) * rng.uniform(0.85, 1.1)
    values += rng.normal(0.0, 40.0, values.shape)
    centre = (
        site[0] + int(rng.integers(-jitter, jitter + 1)),
        site[1] + int(rng.integers(-jitter, jitter + 1)),
    )
    if nodule:
        values[disc(centre, NODULE_RADIUS)] += 900.0
    if pneumothorax:
        shift = rng.integers(-jitter, jitter + 1, size=2)
        where = (PNEUMOTHORAX_CENTRE[0] + int(shift[0]), PNEUMOTHORAX_CENTRE[1] + int(shift[1]))
        values[disc(where, PNEUMOTHORAX_RADIUS)] -= 800.0
    top = (1 << bits) - 1
    values = np.clip(values * (top / 4095.0), 0, top)
    center, width = display_window(values, top, inverted=photometric == "MONOCHROME1")
    if photometric == "MONOCHROME1":
        values = top - values
    write_dx_image(path, SIZE, SIZE, photometric=photometric, view_position=view_position)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.WindowCenter, ds.WindowWidth = str(center), str(width)  # as the modality would
    ds.PixelData = np.rint(values).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, centre


@pytest.fixture(scope="module")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cxr-data")
    rng = np.random.default_rng(7)
    rows = []
    for number in range(TRAINING_IMAGES):
        nodule, pneumothorax = bool(number % 2), bool((number // 2) % 2)
        name = f"img{number:03d}.dcm"
        radiograph(
            folder / name,
            rng,
            nodule=nodule,
            pneumothorax=pneumothorax,
            photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
            bits=16 if rng.random() < 0.5 else 12,
            site=NODULE_SITES[int(rng.integers(len(NODULE_SITES)))],
        )
        rows.append({"file": name, "nodule": int(nodule), "pneumothorax": int(pneumothorax)})
    write_dx_image(folder / "lateral.dcm", SIZE, SIZE)
    lateral = pydicom.dcmread(folder / "lateral.dcm")
    lateral.ViewPosition = "LL"
    lateral.save_as(folder / "lateral.dcm", enforce_file_format=True)
    rows.append({"file": "lateral.dcm", "nodule": 0, "pneumothorax": 0})
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", *LABELS])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def train_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_cxr", ROOT / "models" / "train_cxr.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_cxr"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(training_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny model, trained through the recipe's command-line entry."""
    script = train_script()
    out = tmp_path_factory.mktemp("models")
    torch.set_num_threads(2)
    started = time.perf_counter()
    config = script.parse_args(
        [
            "--data", str(training_data),
            "--labels", ",".join(LABELS),
            "--out", str(out),
            "--epochs", "40",
            "--size", str(GRID),
            "--network", "densenet-tiny",
            "--batch-size", "16",
            "--lr", "0.003",
            "--device", "cpu",
            "--threshold", "nodule=0.5",
        ]
    )  # fmt: skip
    report = script.train(config)
    TIMINGS["training"] = time.perf_counter() - started
    return report


@pytest.fixture(scope="module")
def model(trained: Any) -> ModelFile:
    return verify_model(trained.manifest.parent, "cxr-classify")


@pytest.fixture(scope="module")
def pipeline(model: ModelFile) -> CXRClassifyPipeline:
    pipeline = CXRClassifyPipeline()
    pipeline.load("cpu", {"cxr-classify": model})
    return pipeline


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, tuple[int, int]]]:
    """Images the model has not seen: a nodule (MONOCHROME1, 16 bit), and a clean one."""
    folder = tmp_path_factory.mktemp("cxr-cases")
    rng = np.random.default_rng(1234)
    return {
        "nodule": radiograph(
            folder / "nodule.dcm",
            rng,
            nodule=True,
            pneumothorax=False,
            photometric="MONOCHROME1",
            bits=16,
        ),
        "clean": radiograph(folder / "clean.dcm", rng, nodule=False, pneumothorax=False),
    }


def finding(result: PipelineResult, meaning: str) -> Any:
    (match,) = [f for f in result.findings if f.concept.meaning == meaning]
    return match


# --- preprocessing --------------------------------------------------------------------------------


def test_monochrome1_and_monochrome2_give_the_same_tensor(tmp_path: Path) -> None:
    m2 = load_series([write_dx_image(tmp_path / "m2.dcm", 80, 64).paths[0]])
    m1 = load_series(
        [write_dx_image(tmp_path / "m1.dcm", 80, 64, photometric="MONOCHROME1").paths[0]]
    )
    assert not np.array_equal(m1.array, m2.array)  # stored values are inverted
    grid2, _ = preprocess(m2, (GRID, GRID))
    grid1, _ = preprocess(m1, (GRID, GRID))
    torch.testing.assert_close(grid1, grid2, rtol=0, atol=1e-6)
    assert float(grid2.max()) == pytest.approx(1.0) and float(grid2.min()) == 0.0

    # With a VOI window in the attributes the same holds. A MONOCHROME1 image's
    # window is on its own (inverted) stored values: with DICOM's LINEAR
    # function, centre c on 0..4095 becomes 4096 - c (PS3.3 C.11.2.1.2.1).
    window = {"WindowWidth": "3000", "VOILUTFunction": "LINEAR"}
    m2 = dataclasses.replace(m2, attributes={**m2.attributes, **window, "WindowCenter": "2000"})
    m1 = dataclasses.replace(m1, attributes={**m1.attributes, **window, "WindowCenter": "2096"})
    windowed2, _ = preprocess(m2, (GRID, GRID))
    windowed1, _ = preprocess(m1, (GRID, GRID))
    torch.testing.assert_close(windowed1, windowed2, rtol=0, atol=1e-6)
    assert not torch.allclose(windowed2, grid2)  # and the window was used


def test_bit_depth_does_not_change_the_tensor(tmp_path: Path) -> None:
    loaded = load_series([write_dx_image(tmp_path / "dx.dcm", 64, 64).paths[0]])
    # without a window in the header, the percentile window adapts to any depth
    attributes = {k: v for k, v in loaded.attributes.items() if not k.startswith("Window")}
    volume = dataclasses.replace(loaded, attributes=attributes)
    deep = dataclasses.replace(volume, array=volume.array * 16.0 + 1000.0)  # 16 bit, offset
    torch.testing.assert_close(
        preprocess(deep, (GRID, GRID))[0], preprocess(volume, (GRID, GRID))[0], rtol=0, atol=1e-6
    )


def test_the_header_window_is_the_one_used(tmp_path: Path) -> None:
    path = write_dx_image(tmp_path / "dx.dcm", 64, 64).paths[0]
    loaded = load_series([path])
    assert {"WindowCenter", "WindowWidth"} <= set(loaded.attributes)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = "1000", "400"  # a narrow window, as a reader might set
    ds.save_as(path, enforce_file_format=True)
    narrow = load_series([path])
    assert (narrow.attributes["WindowCenter"], narrow.attributes["WindowWidth"]) == ("1000", "400")
    x = narrow.array[0].astype(np.float64)
    expected = np.clip((x - 999.5) / 399.0 + 0.5, 0.0, 1.0)
    grid, placement = preprocess(narrow, (64, 64))
    assert placement.content_shape == (64, 64)
    np.testing.assert_allclose(grid[0].numpy(), expected, atol=1e-6)
    assert not torch.allclose(grid, preprocess(loaded, (64, 64))[0])


def test_resize_keeps_aspect_and_maps_back_exactly() -> None:
    image = np.zeros((96, 48), dtype=np.float32)
    image[40:56, 8:24] = 1.0
    grid, placement = fit(image, (GRID, GRID))
    assert placement.content_shape == (64, 32) and (placement.top, placement.left) == (0, 16)
    assert float(grid[:, :16].abs().sum()) == 0.0 and float(grid[:, 48:].abs().sum()) == 0.0
    back = placement.to_source(grid).numpy()
    assert back.shape == image.shape
    # The square is where it was: same centre of mass, edges blurred by the resampling only.
    rows, columns = np.indices(image.shape)
    for axis in (rows, columns):
        assert (axis * back).sum() / back.sum() == pytest.approx(
            (axis * image).sum() / image.sum(), abs=0.05
        )
    assert back[44:52, 12:20].min() > 0.9 and back[:30].max() < 0.01
    # Anisotropic pixels: 96x48 pixels of 0.5 x 1.0 mm are a 48 x 48 mm square.
    _, square = fit(image, (GRID, GRID), spacing=(0.5, 1.0))
    assert square.content_shape == (64, 64)


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"ViewPosition": "LL"}, "lateral view (ViewPosition LL)"),
        ({"ViewPosition": "RL"}, "lateral view (ViewPosition RL)"),
        ({"ViewPosition": "LATERAL"}, "lateral view (ViewPosition LATERAL)"),
        ({"PatientOrientation": "A\\F"}, "lateral view (PatientOrientation A\\F"),
        ({"ViewPosition": "RLO"}, "oblique view (ViewPosition RLO)"),
    ],
)
def test_lateral_and_oblique_views_are_refused(
    tmp_path: Path, pipeline: CXRClassifyPipeline, attributes: dict[str, str], reason: str
) -> None:
    volume = load_series([write_dx_image(tmp_path / "dx.dcm", 64, 64).paths[0]])
    kept = {k: v for k, v in volume.attributes.items() if k not in ("PatientOrientation",)}
    view = dataclasses.replace(volume, attributes={**kept, **attributes})
    with pytest.raises(InputRefused) as refused:
        pipeline.run(view, "cpu")
    message = str(refused.value)
    assert message.startswith("cxr-classify is made for frontal (PA/AP) chest radiographs")
    assert reason in message


def test_a_real_lateral_file_is_refused_and_a_missing_view_accepted(
    tmp_path: Path, pipeline: CXRClassifyPipeline
) -> None:
    path = write_dx_image(tmp_path / "dx.dcm", 64, 64).paths[0]
    ds = pydicom.dcmread(path)
    ds.ViewPosition = "LL"
    ds.PatientOrientation = ["A", "F"]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputRefused, match=r"this image is a lateral view \(ViewPosition LL\)"):
        pipeline.run(load_series([path]), "cpu")
    del ds.ViewPosition
    del ds.PatientOrientation
    ds.save_as(path, enforce_file_format=True)
    assert len(pipeline.run(load_series([path]), "cpu").findings) == 2


def test_other_modalities_are_refused(tmp_path: Path, pipeline: CXRClassifyPipeline) -> None:
    volume = load_series([write_dx_image(tmp_path / "dx.dcm", 64, 64).paths[0]])
    with pytest.raises(InputRefused, match="needs a CR or DX radiograph, got 'CT'"):
        pipeline.run(dataclasses.replace(volume, modality="CT"), "cpu")


# --- the trained model ----------------------------------------------------------------------------


def test_training_writes_weights_and_a_manifest(trained: Any, model: ModelFile) -> None:
    assert trained.weights.name == "cxr-classify-1.0.0.pt"
    assert trained.manifest.name == "cxr-classify.yaml"
    assert trained.images == TRAINING_IMAGES and len(trained.skipped) == 1  # the lateral
    document = yaml.safe_load(trained.manifest.read_text())
    assert document["sha256"] == model.sha256 == trained.sha256
    assert document["input"]["network"] == "densenet-tiny" and document["input"]["size"] == GRID
    codes = {(n, c.value, c.scheme) for _, n, c in model.labels}
    assert codes == {("nodule", "27925004", "SCT"), ("pneumothorax", "36118008", "SCT")}
    assert model.thresholds == {"nodule": 0.5, "pneumothorax": 0.5}
    assert model.extra["intended_use"]
    print(f"\ntraining: {TIMINGS['training']:.1f} s, {trained.steps} steps, "
          f"loss {trained.final_loss:.3f}, accuracy {trained.accuracy}")  # fmt: skip
    assert min(trained.accuracy.values()) >= 0.9, trained.accuracy


def test_the_pipeline_finds_the_nodule_and_explains_it(
    pipeline: CXRClassifyPipeline, cases: dict[str, tuple[Path, tuple[int, int]]], model: ModelFile
) -> None:
    path, centre = cases["nodule"]
    volume = load_series([path])
    assert volume.attributes["PhotometricInterpretation"] == "MONOCHROME1"
    started = time.perf_counter()
    result = pipeline.run(volume, "cpu")
    TIMINGS["run with Grad-CAM"] = time.perf_counter() - started
    result.check_grid(volume)
    nodule = finding(result, "Nodule")
    assert nodule.positive and nodule.threshold == 0.5, result.summary
    assert not finding(result, "Pneumothorax").positive, result.summary
    assert result.models == (model.info,)
    assert abnormal(result)  # the ORU gets the abnormal flag and STAT priority

    (heatmap,) = result.heatmaps
    assert heatmap.finding == nodule.concept
    assert heatmap.array.shape == volume.array.shape == (1, SIZE, SIZE)
    assert heatmap.array.dtype == np.float32
    assert float(heatmap.array.min()) >= 0.0 and float(heatmap.array.max()) == pytest.approx(1.0)
    heat = heatmap.array[0]
    region = disc(centre, 2 * NODULE_RADIUS)
    inside, outside = float(heat[region].mean()), float(heat[~region].mean())
    print(f"\nnodule p={nodule.probability:.3f}; heat inside {inside:.3f}, outside {outside:.3f}")
    assert inside > 2.0 * outside
    # The summary says where the heat is (describe_region's own cases are below). The
    # planted nodule is in the upper left of the image; a tiny model's Grad-CAM is
    # coarse, so its centre may fall in the left or the central third, never the right.
    assert "nodule" in result.summary and "(over 0.50)" in result.summary
    where = describe_region(heat, volume.attributes)
    assert where in result.summary
    assert where.startswith("heat centred in the upper ") and "right zone" not in where


@pytest.mark.parametrize(
    ("centre", "orientation", "expected"),
    [
        ((10, 10), "L\\F", "heat centred in the upper left zone of the image (patient's right)"),
        ((10, 85), "L\\F", "heat centred in the upper right zone of the image (patient's left)"),
        ((85, 10), "R\\F", "heat centred in the lower left zone of the image (patient's left)"),
        ((48, 48), "L\\F", "heat centred in the central zone of the image"),
        ((10, 48), "", "heat centred in the upper central zone of the image"),
        ((48, 85), "", "heat centred in the middle right zone of the image"),
    ],
)
def test_describe_region_names_the_third_and_the_patients_side(
    centre: tuple[int, int], orientation: str, expected: str
) -> None:
    heat = np.zeros((SIZE, SIZE), dtype=np.float32)
    heat[disc(centre, 6)] = 1.0
    heat[disc((SIZE - 1 - centre[0], SIZE - 1 - centre[1]), 6)] = 0.4  # below the core
    assert describe_region(heat, {"PatientOrientation": orientation}) == expected
    assert describe_region(np.zeros((SIZE, SIZE)), {}) == "no localised heat"


def test_the_pipeline_is_negative_on_a_clean_image(
    pipeline: CXRClassifyPipeline, cases: dict[str, tuple[Path, tuple[int, int]]]
) -> None:
    result = pipeline.run(load_series([cases["clean"][0]]), "cpu")
    assert not any(f.positive for f in result.findings), result.summary
    assert result.heatmaps == ()
    assert not abnormal(result)
    assert result.summary.startswith("No finding over its threshold.")


def test_without_explanations_the_probabilities_are_the_same(
    model: ModelFile, pipeline: CXRClassifyPipeline, cases: dict[str, tuple[Path, tuple[int, int]]]
) -> None:
    plain = CXRClassifyPipeline(explain=False)
    plain.load("cpu", {"cxr-classify": model})
    volume = load_series([cases["nodule"][0]])
    started = time.perf_counter()
    fast = plain.run(volume, "cpu")
    TIMINGS["run without Grad-CAM"] = time.perf_counter() - started
    full = pipeline.run(volume, "cpu")
    assert fast.heatmaps == ()
    for a, b in zip(fast.findings, full.findings, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
    print(f"\ntimings: {TIMINGS}")


def test_the_pipeline_satisfies_the_protocol_and_is_registered() -> None:
    from importlib.metadata import entry_points

    assert isinstance(CXRClassifyPipeline(), Pipeline)
    names = {ep.name: ep.value for ep in entry_points(group="dicomnode.pipelines")}
    assert names.get("cxr-classify") == "pipelines.cxr_classify:CXRClassifyPipeline"


# --- refusing models ------------------------------------------------------------------------------


def test_a_manifest_whose_sha256_does_not_match_refuses_to_load(
    trained: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / trained.weights.name).write_bytes(trained.weights.read_bytes())
    document = yaml.safe_load(trained.manifest.read_text())
    document["sha256"] = "0" * 64
    (folder / "cxr-classify.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ModelError, match=r"model 'cxr-classify' 1\.0\.0: .*refusing to load it"):
        verify_model(folder, "cxr-classify")


def test_a_model_without_thresholds_or_with_another_network_refuses_to_load(
    model: ModelFile,
) -> None:
    pipeline = CXRClassifyPipeline()
    with pytest.raises(ValueError, match="no threshold for label"):
        pipeline.load("cpu", {"cxr-classify": dataclasses.replace(model, thresholds={})})
    other = dataclasses.replace(model, extra={"input": {"size": GRID, "network": "DenseNet121"}})
    with pytest.raises(ValueError, match="do not fit a DenseNet121"):
        pipeline.load("cpu", {"cxr-classify": other})
    with pytest.raises(ValueError, match="needs the model 'cxr-classify'"):
        pipeline.load("cpu", {})


# --- results: overlay and SR that dciodvfy accepts ------------------------------------------------


@pytest.mark.peers
def test_the_heatmap_becomes_an_overlay_and_the_finding_an_sr_that_pass_dciodvfy(
    pipeline: CXRClassifyPipeline,
    cases: dict[str, tuple[Path, tuple[int, int]]],
    tmp_path: Path,
) -> None:
    path = cases["nodule"][0]
    volume = load_series([path])
    result = pipeline.run(volume, "cpu")
    source = pydicom.dcmread(path)
    context = ResultContext(
        job_id=1,
        pipeline_name=pipeline.name,
        pipeline_version=pipeline.version,
        source_files=(path,),
        out_dir=tmp_path,
        node_name="DICOMNODE",
        algorithm=pipeline.algorithm,
    )
    (overlay,) = build_overlays(result, volume, [source], context)
    report = build_report(result, volume, [source], context, None)
    assert report is not None
    tool = require_tool("dciodvfy")
    for name, ds in (("overlay.dcm", overlay), ("sr.dcm", report)):
        written = tmp_path / name
        ds.save_as(written, enforce_file_format=True)
        done = subprocess.run([tool, str(written)], capture_output=True, text=True, check=False)
        errors = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")
        ]
        assert not errors, f"{name}:\n" + "\n".join(errors)
    assert overlay.StudyInstanceUID == source.StudyInstanceUID
    assert "Nodule" in overlay.SeriesDescription


# --- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_runs_on_cuda(model: ModelFile, cases: dict[str, tuple[Path, tuple[int, int]]]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pipeline = CXRClassifyPipeline()
    pipeline.load("cuda", {"cxr-classify": model})
    volume = load_series([cases["nodule"][0]])
    result = pipeline.run(volume, "cuda")
    cpu = CXRClassifyPipeline()
    cpu.load("cpu", {"cxr-classify": model})
    expected = cpu.run(volume, "cpu")
    assert finding(result, "Nodule").positive
    for a, b in zip(result.findings, expected.findings, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-3)
    assert result.heatmaps[0].array.shape == volume.array.shape


@pytest.mark.peers
@pytest.mark.slow
def test_a_dx_pushed_to_the_node_yields_sr_overlay_and_a_flagged_oru(
    trained: Any,
    cases: dict[str, tuple[Path, tuple[int, int]]],
    make_settings: Any,
    start_node: Any,
    tmp_path: Path,
) -> None:
    """The issue's end to end: a DX image in, an SR, a heatmap overlay and an ORU with
    the finding and its abnormal flag out, all delivered."""
    from dicomnode.jobs import JobState
    from tests.conftest import open_store
    from tests.export.mllp_ris import running_ris
    from tests.helpers import storescu, wait_for
    from tests.results.helpers import dciodvfy

    with running_ris("AA") as ris:
        settings = make_settings(
            assembly={"quiet_seconds": 0.5, "poll_seconds": 0.1},
            runner={
                "enabled": True,
                "device": "cpu",
                "threads": 1,
                "poll_seconds": 0.1,
                "models_dir": str(trained.manifest.parent),
            },
            routing={
                "rules": [
                    {
                        "name": "chest-xray",
                        "match": {"series": {"Modality": {"one_of": ["DX", "CR"]}}},
                        "pipeline": "cxr-classify",
                        "destinations": ["pacs"],
                        "notify": ["ris"],
                    }
                ]
            },
            destinations={
                "pacs": {"type": "folder", "path": str(tmp_path / "pacs")},
                "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
            },
            export={"poll_seconds": 0.2},
        )
        start_node(settings)
        path, _ = cases["nodule"]
        assert storescu([path], settings.node.port).returncode == 0
        store = open_store(settings)

        def finished() -> Any:
            runs = [j for j in store.jobs() if j.kind == "run"]
            ok = runs and runs[0].state in (JobState.DONE, JobState.DEAD)
            return runs[0] if ok else None

        run = wait_for(finished, 120, "the cxr-classify run to finish", interval=0.3)
        assert run.state == JobState.DONE, run.reason
        delivered = sorted((tmp_path / "pacs").rglob("*.dcm"))
        kinds = sorted(p.name.split("_")[0] for p in delivered)
        assert "SR" in kinds and "OT" in kinds and "SEG" not in kinds, kinds
        for object_path in delivered:
            errors, _ = dciodvfy(object_path)
            assert errors == [], (object_path.name, errors)
        assert len(ris.received) == 1
        oru = ris.received[0].replace("\n", "\r")
        flagged = [
            line for line in oru.split("\r") if line.startswith("OBX|") and "27925004" in line
        ]
        assert flagged and flagged[0].split("|")[8] == "A", flagged
