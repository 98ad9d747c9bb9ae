"""Helpers of the result-writer tests: dciodvfy, PixelMed's SR validator, dcentvfy,
writing objects, building cases."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    PipelineResult,
    ResultContext,
    Volume,
)
from dicomnode.results.common import sources_in_volume_order
from dicomnode.results.seg import build_segmentation
from dicomnode.results.sr import build_report
from dicomnode.runner.volume import load_series
from tests.helpers import require_tool

NODE = "DICOMNODE"


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dicom3tools' ``dciodvfy`` on ``path``; return its error and warning lines."""
    result = subprocess.run(
        [require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_valid(path: Path) -> list[str]:
    """Fail unless ``dciodvfy`` finds zero errors in ``path``; return the warnings."""
    errors, warnings = dciodvfy(path)
    assert not errors, f"{path.name}: dciodvfy errors:\n" + "\n".join(errors + warnings)
    return warnings


#: PixelMed's SR validator compiles its templates into XPath expressions beyond the
#: JDK's default limits (JAXP0801003); these lift them for that one process.
_PIXELMED_JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"
)


def pixelmed(path: Path) -> tuple[list[str], list[str]]:
    """Run PixelMed's ``DicomSRValidator`` on ``path``; return its error and warning lines."""
    environment = {**os.environ, "JAVA_TOOL_OPTIONS": _PIXELMED_JAVA_OPTIONS}
    result = subprocess.run(
        [require_tool("DicomSRValidator"), str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        timeout=300,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert any("Root Template Validation Complete" in line for line in lines), (
        f"{path.name}: DicomSRValidator did not finish:\n" + "\n".join(lines[-20:])
    )
    errors = [line for line in lines if line.startswith(("Error", "Internal Error"))]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_sr_valid(path: Path) -> list[str]:
    """Fail unless both ``dciodvfy`` and PixelMed's ``DicomSRValidator`` find zero
    errors in the SR at ``path``; return dciodvfy's warnings."""
    warnings = assert_valid(path)
    errors, _ = pixelmed(path)
    assert not errors, f"{path.name}: DicomSRValidator errors:\n" + "\n".join(errors)
    return warnings


#: dcentvfy files Accession Number under the Series entity for the Secondary Capture
#: and Parametric Map IODs and under Study for the SR: a quirk of its dictionary,
#: reported even between a source image and its SR.
DCENTVFY_ACCESSION_IE = "Different information entities for attribute - Element=<AccessionNumber>"


def dcentvfy(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Run dicom3tools' ``dcentvfy`` over ``paths`` (one result set); return its
    error and warning lines, less the Accession Number entity quirk."""
    result = subprocess.run(
        [require_tool("dcentvfy"), *map(str, paths)], capture_output=True, text=True, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [
        line for line in lines if line.startswith("Warning") and DCENTVFY_ACCESSION_IE not in line
    ]
    return errors, warnings


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as the node does (DICOM file format) and check the preamble."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    head = path.read_bytes()[:132]
    assert head[:128] == bytes(128), "the preamble is not zeroed"
    assert head[128:] == b"DICM"
    return path


#: what a pipeline running a trained model declares
AI = Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True)
#: what ct-lung declares (thresholds and morphology)
MORPHOLOGY = Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False)


def context(
    paths: Sequence[Path], out_dir: Path, name: str = "ct-lung", version: str = "1.0.0"
) -> ResultContext:
    """A context for pipeline ``name``: ``ct-lung`` declares morphology, others AI."""
    return ResultContext(
        job_id=1,
        pipeline_name=name,
        pipeline_version=version,
        source_files=tuple(paths),
        out_dir=out_dir,
        node_name=NODE,
        algorithm=MORPHOLOGY if name == "ct-lung" else AI,
    )


def load(paths: Sequence[Path]) -> tuple[Volume, list[Dataset]]:
    """The volume of ``paths`` and its source datasets in volume order."""
    volume = load_series(paths)
    return volume, sources_in_volume_order(volume, [pydicom.dcmread(p) for p in paths])


@dataclass
class Case:
    """One result written as SEG and SR."""

    volume: Volume
    sources: list[Dataset]
    result: PipelineResult
    context: ResultContext
    seg: Dataset | None
    sr: Dataset | None
    seg_path: Path | None
    sr_path: Path | None


def build_case(
    paths: Sequence[Path],
    result: PipelineResult | None,
    out_dir: Path,
    *,
    name: str = "ct-lung",
    version: str = "1.0.0",
    volume: Volume | None = None,
    sources: list[Dataset] | None = None,
) -> Case:
    """Load ``paths`` (unless given), build SEG and SR of ``result`` and write them.

    ``result`` ``None`` runs ``ct-lung`` on the volume.
    """
    if volume is None or sources is None:
        volume, sources = load(paths)
    if result is None:
        from pipelines.ct_lung import CTLungPipeline

        result = CTLungPipeline().run(volume, "cpu")
    ctx = context(paths, out_dir, name, version)
    seg = build_segmentation(result, volume, sources, ctx)
    sr = build_report(result, volume, sources, ctx, seg)
    seg_path = save(seg, out_dir / "seg.dcm") if seg is not None else None
    sr_path = save(sr, out_dir / "sr.dcm") if sr is not None else None
    return Case(volume, sources, result, ctx, seg, sr, seg_path, sr_path)
