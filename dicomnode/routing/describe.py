"""Reading the metadata routing needs from a study's files."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from dicomnode.config.rules import BINARY_VRS
from dicomnode.routing.model import SeriesInfo, StudyInfo

LOGGER = logging.getLogger(__name__)


def _plain(value: object) -> object:
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, MultiValue | list | tuple):
        return tuple(_plain(item) for item in value)
    return value


def header_attributes(dataset: Dataset) -> dict[str, object]:
    """The top-level, non-sequence, non-binary attributes of a header, by keyword.

    Parameters
    ----------
    dataset : Dataset
        A header as :func:`pydicom.dcmread` returns it.

    Returns
    -------
    dict of str to object
        Keyword to value: text, numbers (pydicom's ``IS``/``DS`` types), or a
        tuple of those for multi-valued attributes; person names as text.
        Private attributes (no keyword) are left out.
    """
    attributes: dict[str, object] = {}
    for element in dataset:
        if not element.keyword or element.VR == "SQ":
            continue
        if set(str(element.VR).split(" or ")) & BINARY_VRS:
            continue
        attributes[element.keyword] = _plain(element.value)
    return attributes


@dataclass
class _SeriesAccumulator:
    attributes: Mapping[str, object]
    count: int = 0


@dataclass
class _StudyAccumulator:
    attributes: Mapping[str, object]
    series: dict[str, _SeriesAccumulator] = field(default_factory=dict)


def _read_header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        LOGGER.debug("skipping %s: not a DICOM file", path)
    except (OSError, EOFError, ValueError) as exc:
        LOGGER.warning("skipping %s: cannot read its header (%s)", path, exc)
    return None


def describe_study(
    paths: Iterable[Path],
    calling_ae: str = "",
    *,
    recorded: Sequence[tuple[str, str]] | None = None,
) -> list[StudyInfo]:
    """Group files into studies and series and collect their routing metadata.

    Parameters
    ----------
    paths : iterable of Path
        DICOM files; files that are not DICOM, or lack a StudyInstanceUID or
        SeriesInstanceUID, are skipped (and logged).
    calling_ae : str
        The AE title the files came from, copied into every study.
    recorded : sequence of (str, str), optional
        Each file's Study and Series Instance UIDs as the node recorded them
        when it received the file (same order as ``paths``): then only the
        first readable file of each series is read, and the others are counted
        without reading them (a 256-slice series: one header instead of 256).

    Returns
    -------
    list of StudyInfo
        One per StudyInstanceUID, in the order the studies were first seen;
        each study's series in the order they were first seen. Study
        attributes come from the study's first file, series attributes from
        the series' first file; ``instance_count`` counts the files.
    """
    studies: dict[str, _StudyAccumulator] = {}
    known = iter(recorded) if recorded is not None else None
    for path in paths:
        if known is not None:
            study_uid, series_uid = next(known)
            study = studies.get(study_uid)
            series = None if study is None else study.series.get(series_uid)
            if series is not None:
                series.count += 1
                continue
        dataset = _read_header(Path(path))
        if dataset is None:
            continue
        study_uid = str(dataset.get("StudyInstanceUID", "")).strip()
        series_uid = str(dataset.get("SeriesInstanceUID", "")).strip()
        if not study_uid or not series_uid:
            LOGGER.warning("skipping %s: no StudyInstanceUID or SeriesInstanceUID", path)
            continue
        study = studies.get(study_uid)
        series = None if study is None else study.series.get(series_uid)
        if series is None:
            attributes = MappingProxyType(header_attributes(dataset))
            if study is None:
                study = studies[study_uid] = _StudyAccumulator(attributes)
            series = study.series[series_uid] = _SeriesAccumulator(attributes)
        series.count += 1
    return [
        StudyInfo(
            study_instance_uid=study_uid,
            calling_ae=calling_ae,
            attributes=study.attributes,
            series=tuple(
                SeriesInfo(
                    series_instance_uid=series_uid,
                    attributes=series.attributes,
                    instance_count=series.count,
                )
                for series_uid, series in study.series.items()
            ),
        )
        for study_uid, study in studies.items()
    ]
