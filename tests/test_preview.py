"""Preview images of written results: a ct-lung SEG over its CT, a heatmap over
a radiograph, made by the real pipeline and result writer."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from dicomnode.errors import ResultError
from dicomnode.preview import HEAT_THRESHOLD, preview_image, render_preview
from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    Code,
    Finding,
    Heatmap,
    PipelineResult,
    ResultContext,
)
from dicomnode.resultfile import save_result
from dicomnode.results.writer import DicomResultWriter
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import write_ct_series, write_dx_image
from pipelines.ct_lung import CTLungPipeline
from tests.test_cli import dicomnode


def context(files: list[Path], out_dir: Path, name: str, algorithm: Algorithm) -> ResultContext:
    return ResultContext(
        job_id=7,
        pipeline_name=name,
        pipeline_version="1.0.0",
        source_files=tuple(files),
        out_dir=out_dir,
        node_name="DICOMNODE",
        algorithm=algorithm,
    )


def png_pixels(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGB"
    return np.asarray(image)


def test_a_ct_lung_preview_colours_the_segments_and_nothing_else(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=20, rows=64, columns=64)
    volume = load_series(series.paths)
    pipeline = CTLungPipeline()
    pipeline.load("cpu")
    result = pipeline.run(volume, "cpu")
    assert result.label_map is not None
    outbox = tmp_path / "outbox"
    DicomResultWriter().write(
        result,
        volume,
        context(
            series.paths,
            outbox,
            "ct-lung",
            Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False),
        ),
    )

    data = render_preview(outbox, series.paths)
    rgb = png_pixels(data).astype(int)

    # the key slice is the one with the most segmented pixels
    areas = (result.label_map > 0).reshape(result.label_map.shape[0], -1).sum(axis=1)
    key = int(np.argmax(areas))
    assert preview_image(outbox, series.paths).source[0] == volume.sources[key].sop_instance_uid
    labels = result.label_map[key]
    assert rgb.shape == (*labels.shape, 3)

    # each segment's recommended display colour, as the SEG in the outbox says
    (seg_path,) = outbox.glob("SEG_*.dcm")
    seg = pydicom.dcmread(seg_path)
    colours = {}
    for item in seg.SegmentSequence:
        lab = list(item.RecommendedDisplayCIELabValue)
        colours[int(item.SegmentNumber)] = np.array(
            hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True)
        )
    numbers = {s.label: n for n, s in enumerate(result.segments, start=1)}

    outside = labels == 0
    assert outside.any()
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((r == g) & (g == b))[outside].all(), "a pixel outside every segment is coloured"
    drawn = [label for label in np.unique(labels) if label]
    assert len(drawn) >= 2  # both lungs on the key slice
    for label in drawn:
        mask = labels == label
        colour = colours[numbers[int(label)]]
        pixels = rgb[mask]
        grey_like = (pixels[:, 0] == pixels[:, 1]) & (pixels[:, 1] == pixels[:, 2])
        assert not grey_like.any(), f"segment {label}: a pixel inside is left grey"
        # blended towards the colour: the channel order of the colour shows
        dominant = int(np.argmax(colour))
        assert (pixels.argmax(axis=1) == dominant).mean() > 0.95, (label, colour)
        # its outline is the colour itself
        exact = (np.abs(pixels - colour).max(axis=1) == 0).sum()
        assert exact > 0.1 * mask.sum(), f"segment {label}: no outline in {colour}"


def test_a_radiograph_preview_shows_the_heat_where_it_is_hot(tmp_path: Path) -> None:
    dx = write_dx_image(tmp_path / "dx.dcm", rows=96, columns=96)
    volume = load_series(dx.paths)
    rows, columns = volume.array.shape[1:]
    y, x = np.mgrid[0:rows, 0:columns]
    heat = np.exp(-((y - 30.0) ** 2 + (x - 28.0) ** 2) / (2 * 6.0**2)).astype(np.float32)
    nodule = Code("27925004", "SCT", "Nodule")
    result = PipelineResult(
        findings=(Finding(nodule, 0.9, 0.5),), heatmaps=(Heatmap(nodule, heat[None]),)
    )
    algorithm = Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True)
    result_dir = save_result(
        result,
        volume,
        tmp_path / "results" / "job-7",
        pipeline="cxr-classify",
        version="1.0.0",
        algorithm=algorithm,
        device="cpu",
        seconds=0.1,
    )
    outbox = tmp_path / "outbox"
    DicomResultWriter().write(result, volume, context(dx.paths, outbox, "cxr-classify", algorithm))
    # a radiograph gets no parametric map: without the result folder there is no heat
    with pytest.raises(ResultError, match="no segmentation and no heatmap"):
        render_preview(outbox, dx.paths)

    rgb = png_pixels(render_preview(outbox, dx.paths, result_dir=result_dir)).astype(int)
    ds = pydicom.dcmread(dx.paths[0])
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    plain = np.clip((ds.pixel_array - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    plain = np.rint(plain * 255).astype(int)
    hot = heat > 0.5
    cold = heat <= HEAT_THRESHOLD
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # where it is cold, the plain windowed image, grey
    assert (r[cold] == plain[cold]).all() and (g[cold] == plain[cold]).all()
    assert (b[cold] == plain[cold]).all()
    # where it is hot, it differs from the plain image, towards red-yellow
    assert (r[hot] > b[hot]).all() and (g[hot] > b[hot]).all()
    assert (np.abs(rgb[hot] - plain[hot][:, None]).max(axis=1) > 20).all()


def test_the_preview_command_over_a_result_folder(tmp_path: Path) -> None:
    """``dicomnode run --out`` then ``dicomnode preview --outbox``: an admin's
    preview without a node."""
    series = write_ct_series(tmp_path / "ct", slices=20, rows=64, columns=64)
    ran = dicomnode(
        "run",
        str(tmp_path / "ct"),
        "--pipeline",
        "ct-lung",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    )
    assert ran.returncode == 0, ran.stderr
    shown = dicomnode(
        "preview",
        "--outbox",
        str(tmp_path / "out" / "dicom"),
        "--sources",
        str(tmp_path / "ct"),
        "-o",
        str(tmp_path / "p.png"),
    )
    assert shown.returncode == 0, shown.stderr
    assert png_pixels((tmp_path / "p.png").read_bytes()).shape == (64, 64, 3)
    assert len(series.paths) == 20
    missing = dicomnode("preview", "--outbox", str(tmp_path / "out" / "dicom"), "-o", "x.png")
    assert missing.returncode != 0 and "--sources" in missing.stderr
