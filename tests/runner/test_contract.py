"""The input contract: what a pipeline declares it accepts, and the runner refusing the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from dicomnode.protocol import InputRefused, InputSpec, Volume
from dicomnode.runner.contract import check_input
from dicomnode.runner.volume import load_series
from dicomnode.runner.worker import Task, Worker, WorkerSettings
from dicomnode.synthetic import write_ct_series
from pipelines.ct_lung.pipeline import INPUT as CT_LUNG
from tests.test_cli import dicomnode

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """The phantom as the node's tests send it: 24 slices of 2.5 mm, 400 mm across."""
    series = write_ct_series(tmp_path_factory.mktemp("chest"), slices=24, rows=64, columns=64)
    return load_series(series.paths)


def test_a_chest_ct_is_inside_ct_lungs_contract(chest: Volume) -> None:
    check_input("ct-lung", CT_LUNG, chest)
    assert chest.attributes["BodyPartExamined"] == "CHEST"


def test_the_tiny_ct_of_the_report_is_refused(tmp_path: Path) -> None:
    """5 slices of 16x16 pixels, 7.8 mm across: it gave a 0.1 mL "Left lung"."""
    series = write_ct_series(tmp_path, slices=5, rows=16, columns=16, spacing=7.8 / 16)
    with pytest.raises(InputRefused) as refused:
        check_input("ct-lung", CT_LUNG, load_series(series.paths))
    reason = str(refused.value)
    assert reason.startswith("ct-lung refuses this series: ")
    assert "field of view 7.8 x 7.8 mm (16 x 16 pixels), not 200 to 800 mm" in reason
    assert "5 slice(s), not 16 or more" in reason


def test_a_zoomed_reconstruction_is_refused() -> None:
    """pydicom's CT_small: 85 mm of the posterior chest, one slice."""
    with pytest.raises(InputRefused, match=r"field of view 84.7 x 84.7 mm"):
        check_input("ct-lung", CT_LUNG, load_series([SAMPLES / "CT_small.dcm"]))


@pytest.mark.parametrize(
    ("body_part", "accepted"),
    [
        ("CHEST", True),
        ("Thorax", True),
        ("CHEST_ABDOMEN_PELVIS", True),
        ("CHESTABDPELVIS", True),
        ("WHOLEBODY", True),
        ("", True),  # the header does not say: the geometry decides
        ("HEAD", False),
        ("ABDOMEN", False),
        ("KNEE\x1b[2J", False),
    ],
)
def test_body_part_when_the_header_gives_one(chest: Volume, body_part: str, accepted: bool) -> None:
    attributes = {**chest.attributes, "BodyPartExamined": body_part}
    volume = dataclasses.replace(chest, attributes=attributes)
    if accepted:
        check_input("ct-lung", CT_LUNG, volume)
        return
    with pytest.raises(InputRefused, match="Body Part Examined") as refused:
        check_input("ct-lung", CT_LUNG, volume)
    assert "\x1b" not in str(refused.value)  # a value from the wire, escaped


def test_spacing_bounds(chest: Volume) -> None:
    coarse = dataclasses.replace(chest, spacing=(2.5, 12.5, 12.5))
    with pytest.raises(InputRefused, match=r"pixel spacing 12.5 x 12.5 mm, not 0.2 to 8 mm"):
        check_input("ct-lung", CT_LUNG, coarse)
    sparse = dataclasses.replace(chest, spacing=(20.0, 6.25, 6.25))
    with pytest.raises(InputRefused, match=r"slices 20 mm apart, not 0.3 to 10 mm"):
        check_input("ct-lung", CT_LUNG, sparse)
    unknown = dataclasses.replace(chest, attributes={"PixelSpacingSource": "none"})
    with pytest.raises(InputRefused, match="no pixel spacing in the header"):
        check_input("ct-lung", CT_LUNG, unknown)


def test_modality_and_slice_count(chest: Volume) -> None:
    with pytest.raises(InputRefused, match="ct-lung accepts CT, not 'MR'"):
        check_input("ct-lung", CT_LUNG, dataclasses.replace(chest, modality="MR"))
    one = InputSpec(modalities=frozenset({"CT"}), min_slices=1, max_slices=1)
    with pytest.raises(InputRefused, match=r"24 slice\(s\), not 1 "):
        check_input("x", one, chest)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"modalities": frozenset()}, "modalities"),
        ({"modalities": frozenset({"ct"})}, "upper-case"),
        ({"min_slices": 0}, "min_slices"),
        ({"min_slices": 4, "max_slices": 2}, "max_slices"),
        ({"field_of_view_mm": (800.0, 200.0)}, "field_of_view_mm"),
        ({"pixel_spacing_mm": (0.0, 1.0)}, "pixel_spacing_mm"),
        ({"body_parts": frozenset({"chest"})}, "body_parts"),
    ],
)
def test_a_contract_that_cannot_hold_is_refused(fields: dict[str, object], words: str) -> None:
    arguments: dict[str, object] = {"modalities": frozenset({"CT"}), **fields}
    with pytest.raises(ValueError, match=words):
        InputSpec(**arguments)  # type: ignore[arg-type]


def test_the_worker_refuses_at_once_with_the_reason(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=5, rows=16, columns=16, spacing=7.8 / 16)
    worker = Worker(WorkerSettings(device="cpu", threads=1, plugins=(), models_dir="models"))
    outcome = worker.run(
        Task(1, "ct-lung", tuple(str(p) for p in series.paths), str(tmp_path / "result"))
    )
    assert not outcome.ok and outcome.permanent
    assert "field of view 7.8 x 7.8 mm" in outcome.summary
    assert not (tmp_path / "result").exists()


def test_dicomnode_run_says_why(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=5, rows=16, columns=16, spacing=7.8 / 16)
    result = dicomnode(
        "run", str(tmp_path / "ct"), "--pipeline", "ct-lung", "--out", str(tmp_path / "out")
    )
    assert result.returncode == 1
    assert "ct-lung refuses this series: field of view 7.8 x 7.8 mm" in result.stderr
    assert not (tmp_path / "out").exists()
    assert series.paths


def test_the_validated_range_names_each_value_outside_it(tmp_path: Path) -> None:
    from dicomnode.protocol import ValidatedRange
    from dicomnode.runner.contract import range_problems

    series = write_ct_series(tmp_path / "thick", slices=6, rows=32, columns=32, slice_thickness=5.0)
    volume = load_series(series.paths)
    inside = ValidatedRange(slice_thickness_mm=(4.0, 6.0), slices=(1, 10))
    assert range_problems(inside, volume) == []
    assert range_problems(ValidatedRange(), volume) == []
    outside = ValidatedRange(slice_thickness_mm=(0.5, 3.0), slices=(16, 1000), kvp=(80, 140))
    problems = range_problems(outside, volume)
    assert problems[0] == "slice thickness 5 mm, validated on 0.5 to 3 mm"
    assert "6 slice(s), validated on 16 to 1000" in problems
    assert len(problems) == 2  # the phantom's 120 kVp is inside
    assert range_problems(ValidatedRange(kvp=(80, 100)), volume) == [
        "kVp 120, validated on 80 to 100"
    ]
    del volume.attributes["KVP"]  # a header without the value is not shown to be inside
    assert range_problems(ValidatedRange(kvp=(80, 140)), volume) == [
        "no kVp in the header (validated on 80 to 140)"
    ]
    with pytest.raises(ValueError, match="slices"):
        ValidatedRange(slices=(5, 2))
