"""Cases shared by the SEG and SR tests, built once per session (small images)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from dicomnode.synthetic import write_ct_series
from tests.viewer import OhifHarness, ViewerUnavailable, ohif_harness

from .helpers import Case, build_case


@pytest.fixture(scope="session")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """ct-lung on a 24-slice 64x64 phantom whose patient has a non-ASCII name."""
    root = tmp_path_factory.mktemp("ct")
    series = write_ct_series(
        root / "series", slices=24, rows=64, columns=64, patient_name="Müller^Jürgen"
    )
    return build_case(series.paths, None, root / "out")


@pytest.fixture
def ohif(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OhifHarness]:
    """OHIF over Orthanc's DICOMweb in headless Chromium; skips, saying why, only when
    OHIF, Chromium or Playwright cannot be installed here."""
    with ExitStack() as stack:
        try:
            harness = stack.enter_context(ohif_harness(tmp_path, request.node.name))
        except ViewerUnavailable as exc:
            pytest.skip(f"no web viewer to test with: {exc}")
        yield harness
