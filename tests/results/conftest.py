"""Cases shared by the SEG and SR tests, built once per session (small images)."""

from __future__ import annotations

import pytest

from dicomnode.synthetic import write_ct_series

from .helpers import Case, build_case


@pytest.fixture(scope="session")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """ct-lung on a 24-slice 64x64 phantom whose patient has a non-ASCII name."""
    root = tmp_path_factory.mktemp("ct")
    series = write_ct_series(
        root / "series", slices=24, rows=64, columns=64, patient_name="Müller^Jürgen"
    )
    return build_case(series.paths, None, root / "out")
