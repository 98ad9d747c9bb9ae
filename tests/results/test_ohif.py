"""What a radiologist's viewer shows of the node's results: OHIF 3 in headless Chromium.

OHIF's prebuilt app (npm ``@ohif/app``, pinned in the Makefile, installed by
``make ohif``) reads the study from Orthanc's DICOMweb plugin; Playwright drives
Debian's Chromium. Screenshots and the browser console of each test land in
``test-artifacts/ohif/<test>/``.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from skimage import measure

from dicomnode.protocol import Code, PipelineResult
from dicomnode.results.writer import DicomResultWriter
from dicomnode.synthetic import Series, write_ct_series
from pipelines.ct_lung import CTLungPipeline
from tests.viewer import OhifHarness

from .helpers import context, load

pytestmark = [pytest.mark.peers, pytest.mark.slow]

LUNGS = ("Right lung", "Left lung")
VOLUME = "118565006"  # (SCT) Volume


def ct_lung_result(tmp_path: Path) -> tuple[Series, PipelineResult, list[Path]]:
    """A synthetic chest CT, ct-lung's result on it, and the node's result objects."""
    series = write_ct_series(tmp_path / "ct", slices=48, rows=64, columns=64)
    volume, _ = load(series.paths)
    result = CTLungPipeline().run(volume, "cpu")
    DicomResultWriter().write(result, volume, context(series.paths, tmp_path / "out"))
    written = sorted((tmp_path / "out").glob("*.dcm"))
    assert any(pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR" for p in written)
    return series, result, written


def lung_volumes(result: PipelineResult) -> dict[str, float]:
    """Each lung's volume (mL) as the pipeline measured it."""
    names = {s.label: s.name for s in result.segments}
    return {
        names[m.segment_label]: m.value
        for m in result.measurements
        if m.segment_label is not None and m.concept.value == VOLUME
    }


def show_and_read(ohif: OhifHarness, series: Series, files: list[Path]) -> dict[str, object]:
    """Upload the CT and ``files``, open the SR in OHIF; return what OHIF shows."""
    ohif.upload([*series.paths, *files])
    page = ohif.new_page()
    page.open_study(series.study_uid, series_count=1 + len(files))
    page.open_sr()
    texts = page.annotation_texts("Volume:", len(LUNGS))
    shot = page.screenshot("sr-viewport")
    page.accept_tracking()
    rows = page.measurement_rows(len(LUNGS))
    tracked = page.screenshot("measurements")
    page.save_console()
    print(f"OHIF screenshots: {shot} {tracked}")
    return {"texts": texts, "rows": rows}


def assert_lungs_shown(shown: dict[str, object], volumes: dict[str, float]) -> None:
    texts = shown["texts"]
    assert isinstance(texts, list)
    for name in LUNGS:
        # OHIF prints an SR's NUM as "<concept meaning>: <value, 2 decimals> <unit code>"
        assert f"Volume: {volumes[name]:.2f} mL" in texts, (name, texts)
    rows = shown["rows"]
    assert isinstance(rows, list)
    titles = [title for title, _ in rows]
    for name in LUNGS:
        assert titles.count(name) == 1, (name, rows)


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def reference_sr(series: Series, result: PipelineResult, out: Path) -> Path:
    """An SR of ``result`` encoded as OHIF writes its own: what OHIF is known to list.

    Per lung, a TID 1501 group with the tracking identifier of cornerstone's freehand
    ROI tool, the lung as Finding, and its volume inferred from a closed outline on
    the lung's largest slice (SCOORD selected from that CT image).
    """
    _, sources = load(series.paths)
    assert result.label_map is not None
    groups = []
    for segment in result.segments:
        items = [m for m in result.measurements if m.segment_label == segment.label]
        if not items:
            continue
        mask = result.label_map == segment.label
        key = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        contour = max(measure.find_contours(mask[key].astype(np.float32), 0.5), key=len)
        points = np.stack([contour[:, 1] + 0.5, contour[:, 0] + 0.5], axis=1)
        points = np.vstack([points, points[:1]]).astype(np.float32)
        outline = hd.sr.CoordinatesForMeasurement(
            "POLYLINE", points, hd.sr.SourceImageForRegion.from_source_image(sources[key])
        )
        measurements = [
            hd.sr.Measurement(
                name=_coded(m.concept),
                value=m.value,
                unit=_coded(m.unit),
                referenced_coordinates=[outline] if m.concept.value == VOLUME else None,
            )
            for m in items
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier="Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
                ),
                finding_type=_coded(segment.type),
                measurements=measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="REFERENCE"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr: Dataset = hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=9902,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="reference",
        series_description="Reference SR as OHIF writes it",
    )
    path = out / "reference-sr.dcm"
    out.mkdir(parents=True, exist_ok=True)
    sr.save_as(path, enforce_file_format=True)
    return path


def test_harness_sees_the_measurements_of_an_sr_encoded_as_ohif_writes_it(
    ohif: OhifHarness, tmp_path: Path
) -> None:
    """The harness itself: an SR in OHIF's own encoding is drawn and listed."""
    series, result, _ = ct_lung_result(tmp_path)
    sr = reference_sr(series, result, tmp_path / "reference")
    shown = show_and_read(ohif, series, [sr])
    assert_lungs_shown(shown, lung_volumes(result))


def test_ohif_shows_the_ct_lung_volumes_over_the_ct(ohif: OhifHarness, tmp_path: Path) -> None:
    """The node's SEG and SR in OHIF: each lung outlined on the CT with its volume in mL,
    and listed in the Measurements panel once the radiologist tracks the SR."""
    series, result, written = ct_lung_result(tmp_path)
    shown = show_and_read(ohif, series, written)
    assert_lungs_shown(shown, lung_volumes(result))


@pytest.mark.xfail(
    strict=False,
    reason="OHIF 3.13.2 leaves this radiograph report's annotations undrawn in about half "
    "of the runs (the report loads, the console says 'Measurement is preview, skipping'); "
    "it passes or fails by run, not by retrying in the page: open, to be understood",
)
def test_ohif_shows_the_findings_of_a_radiograph(ohif: OhifHarness, tmp_path: Path) -> None:
    """A classifier's report on a DX, one finding with a heatmap (placed at its peak)
    and two without (about the whole image): OHIF loads it and prints every
    finding's probability; no group without coordinates makes it refuse the report."""
    from dicomnode.protocol import Finding, Heatmap
    from dicomnode.synthetic import write_dx_image

    series = write_dx_image(tmp_path / "dx.dcm", 128, 128)
    volume, _ = load(series.paths)
    heat = np.zeros(volume.array.shape, dtype=np.float32)
    heat[0, 30:50, 30:50] = 0.9
    nodule = Code("27925004", "SCT", "Nodule")
    result = PipelineResult(
        findings=(
            Finding(nodule, 0.91, 0.5),
            Finding(Code("36118008", "SCT", "Pneumothorax"), 0.04, 0.5),
            Finding(Code("233604007", "SCT", "Pneumonia"), 0.12, 0.5),
        ),
        heatmaps=(Heatmap(nodule, heat),),
    )
    out = tmp_path / "out"
    written = [
        o.path
        for o in DicomResultWriter()
        .write(result, volume, context(series.paths, out, name="cxr-classify"))
        .objects
    ]
    ohif.upload([*series.paths, *written])
    page = ohif.new_page()
    result_series = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in written
    }
    # open_study waits for a slice number ("I: n"), which OHIF does not print for a DX;
    # its window ("W: n L: n") is printed once the radiograph is drawn. Opening the SR
    # before that lets the radiograph's late first draw take the viewport back.
    page.page.goto(f"{ohif.server.url}/viewer?StudyInstanceUIDs={series.study_uid}")
    page.wait(
        """(n) => document.querySelectorAll('[data-cy^="study-browser-thumbnail"]').length >= n
            && /W:\\s*-?\\d/.test(document.querySelector(
               '[data-cy="viewport-overlay-bottom-left"]')?.textContent || '')""",
        "the radiograph's study and its image",
        1 + len(result_series),
    )
    page.open_sr()
    texts = page.annotation_texts("Probability:", 3)
    page.screenshot("sr-viewport")
    page.save_console()
    for value in (0.91, 0.04, 0.12):
        assert any(f"Probability: {value:.2f}" in text for text in texts), (value, texts)
