"""What the SEG and SR writers share: source datasets in volume order, codes,
the algorithm's identification, the names and numbers of result objects.

Nothing here writes files; :mod:`.seg` and :mod:`.sr` build datasets with it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset

from dicomnode.protocol import Code, ModelInfo, PipelineResult, ResultContext, Volume

from .uids import derived_uid

__all__ = [
    "MANUFACTURER",
    "algorithm_family",
    "algorithm_parameters",
    "check_sources",
    "code_string",
    "coded",
    "copy_identity",
    "copy_patient_and_study",
    "distinct_sources",
    "limit",
    "local_coding_schemes",
    "object_uid",
    "result_codes",
    "result_texts",
    "segment_numbers",
    "segment_tracking_uid",
    "series_laterality",
    "sources_in_volume_order",
    "specific_character_set",
]

MANUFACTURER = "dicomnode"
"""Manufacturer (0008,0070) of every object the node writes."""

_LO_LENGTH = 64  # Long String
_SEXES = frozenset({"M", "F", "O"})
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_AGE = re.compile(r"\d{3}[DWMY]")

PATIENT_AND_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
"""Patient and study attributes every object has (Type 2: empty when the source
has none)."""

PATIENT_AND_STUDY_OPTIONAL = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthTime",
    "OtherPatientIDsSequence",
    "EthnicGroup",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "QualityControlSubject",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "SmokingStatus",
    "PregnancyStatus",
)
"""Patient and study attributes an object has exactly when the source has them."""
_CS_LENGTH = 16  # Code String


def coded(code: Code) -> hd.sr.CodedConcept:
    """The protocol's :class:`~dicomnode.protocol.Code` as a highdicom concept."""
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm_family(context: ResultContext) -> hd.sr.CodedConcept:
    """The Algorithm Family (CID 7162) the pipeline declares: "Artificial
    Intelligence" only for a pipeline that runs a trained model."""
    return coded(context.algorithm.family)


def algorithm_parameters(models: Iterable[ModelInfo]) -> dict[str, str]:
    """Name, version and SHA-256 of each model, as algorithm parameters.

    One model gives ``model``, ``model_version`` and ``model_sha256``; several
    are numbered (``model1``, ``model1_version``...). No model gives ``{}``.
    """
    listed = list(models)
    parameters: dict[str, str] = {}
    for index, model in enumerate(listed, start=1):
        key = "model" if len(listed) == 1 else f"model{index}"
        parameters[key] = model.name
        parameters[f"{key}_version"] = model.version
        parameters[f"{key}_sha256"] = model.sha256
    return parameters


def object_uid(volume: Volume, context: ResultContext, kind: str, *parts: object) -> str:
    """A deterministic UID for one result object (or part of one).

    The same source series, pipeline name and version always give the same
    UID, so a re-run replaces its earlier objects instead of duplicating them.

    Parameters
    ----------
    volume : Volume
        The input volume (its series UID identifies the input).
    context : ResultContext
        Pipeline name and version.
    kind : str
        The object, e.g. ``"seg"`` or ``"sr"``.
    *parts : object
        What in that object the UID is for, e.g. ``"series"``, ``"instance"``.
    """
    return derived_uid(
        volume.series_instance_uid, context.pipeline_name, context.pipeline_version, kind, *parts
    )


def segment_tracking_uid(volume: Volume, context: ResultContext, label: int) -> str:
    """Tracking UID of one segment: the same in the SEG and in the SR's group."""
    return object_uid(volume, context, "segment", label)


def segment_numbers(result: PipelineResult) -> dict[int, int]:
    """Label value -> SEG segment number (1, 2, ... in the order of ``result.segments``)."""
    return {segment.label: number for number, segment in enumerate(result.segments, start=1)}


def limit(text: str, length: int = _LO_LENGTH) -> str:
    """``text`` cut to a DICOM string length (64: Long String)."""
    return text if len(text) <= length else text[: length - 1] + "…"


def code_string(text: str) -> str:
    """``text`` as a Code String value: upper case, digits, space and underscore, 16 long."""
    return re.sub(r"[^A-Z0-9 _]", "_", text.upper())[:_CS_LENGTH].strip() or "AI"


def copy_patient_and_study(source: Dataset, target: Dataset) -> list[str]:
    """Give ``target`` the patient and study attributes of ``source``, the same
    in every object of a result.

    The Type 2 attributes (:data:`PATIENT_AND_STUDY_TYPE2`) are always
    written, empty when the source has none or a value that is not valid for
    its VR (a malformed date, time or sex); the others
    (:data:`PATIENT_AND_STUDY_OPTIONAL`) are copied verbatim when the source
    has a valid value and removed from ``target`` otherwise, whatever a
    library put there. Study Instance UID is the caller's.

    Returns
    -------
    list of str
        The text values written, for choosing a character set.
    """
    texts: list[str] = []
    for keyword in (*PATIENT_AND_STUDY_TYPE2, *PATIENT_AND_STUDY_OPTIONAL):
        element = source.data_element(keyword) if keyword in source else None
        if element is not None and element.VR == "SQ":
            if element.value:
                target[keyword] = copy.deepcopy(element)
            elif keyword in target:
                del target[keyword]
            continue
        value = None if element is None else element.value
        text = "" if value is None else str(value).strip()
        if not _valid(keyword, text):
            text = ""
        if keyword in PATIENT_AND_STUDY_TYPE2:
            setattr(target, keyword, copy.deepcopy(value) if text and value is not None else "")
        elif text and element is not None:
            target[keyword] = copy.deepcopy(element)
        elif keyword in target:
            del target[keyword]
        if text:
            texts.append(text)
    return texts


def copy_identity(source: Dataset, target: Dataset) -> None:
    """:func:`copy_patient_and_study`, and UTF-8 (``ISO_IR 192``) as the
    character set when a copied value is not ASCII and ``target`` declares
    none (a source that declares none but holds such a value)."""
    copied = copy_patient_and_study(source, target)
    if not all(text.isascii() for text in copied) and not target.get("SpecificCharacterSet"):
        target.SpecificCharacterSet = "ISO_IR 192"


def _valid(keyword: str, text: str) -> bool:
    if not text:
        return True
    if keyword == "PatientSex":
        return text in _SEXES
    if keyword == "PatientAge":
        return bool(_AGE.fullmatch(text))
    if keyword.endswith("Date"):
        return bool(_DATE.fullmatch(text))
    if keyword.endswith("Time"):
        return bool(_TIME.fullmatch(text))
    return True


def series_laterality(source: Dataset) -> str | None:
    """Laterality (0020,0060) of a series derived from ``source``: the
    source's own (even empty), else R or L from its Image or Frame
    Laterality; empty ("unknown") when the source names no body part, so
    paired parts are not left without one; ``None`` (absent) for a named
    body part without laterality."""
    if "Laterality" in source:
        return str(source.Laterality or "")
    candidates = [source.get("ImageLaterality")]
    for shared in source.get("SharedFunctionalGroupsSequence") or []:
        for anatomy in shared.get("FrameAnatomySequence") or []:
            candidates.append(anatomy.get("FrameLaterality"))
    for value in candidates:
        if str(value or "").strip() in ("R", "L"):
            return str(value).strip()
    if not str(source.get("BodyPartExamined", "") or "").strip():
        return ""
    return None


def check_sources(volume: Volume, sources: Sequence[Dataset]) -> None:
    """Raise ``ValueError`` unless ``sources[i]`` is the dataset of ``volume.sources[i]``."""
    if len(sources) != len(volume.sources):
        raise ValueError(
            f"{len(sources)} source datasets given for a volume of {len(volume.sources)} slices"
        )
    for index, (ds, source) in enumerate(zip(sources, volume.sources, strict=True)):
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid != source.sop_instance_uid:
            raise ValueError(
                f"source dataset {index} is SOP instance {uid or '(none)'}, "
                f"but slice {index} of the volume comes from {source.sop_instance_uid}"
            )
    if len({s.sop_instance_uid for s in volume.sources}) < len(volume.sources) and any(
        s.frame_number is None for s in volume.sources
    ):
        raise ValueError("a single-frame source instance appears twice in the volume")


def distinct_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    """The source datasets without repeats (a multi-frame source appears once), in order."""
    seen: set[str] = set()
    distinct: list[Dataset] = []
    for ds in sources:
        uid = str(ds.SOPInstanceUID)
        if uid not in seen:
            seen.add(uid)
            distinct.append(ds)
    return distinct


def sources_in_volume_order(volume: Volume, datasets: Iterable[Dataset]) -> list[Dataset]:
    """Arrange the source datasets (any order) as the writers want them.

    Parameters
    ----------
    volume : Volume
        The volume the datasets were loaded into.
    datasets : iterable of Dataset
        The input series' instances, in any order; others are ignored.

    Returns
    -------
    list of Dataset
        ``result[i]`` is the dataset of ``volume.sources[i]`` (a multi-frame
        dataset repeats, once per frame).

    Raises
    ------
    ValueError
        If a slice's instance is not among ``datasets``.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    ordered: list[Dataset] = []
    for index, source in enumerate(volume.sources):
        ds = by_uid.get(source.sop_instance_uid)
        if ds is None:
            raise ValueError(
                f"slice {index} comes from SOP instance {source.sop_instance_uid}, "
                "which is not among the source datasets"
            )
        ordered.append(ds)
    return ordered


def local_coding_schemes(used: Iterable[Code]) -> list[CodingSchemeIdentificationItem] | None:
    """Coding Scheme Identification items for the local schemes among ``used``.

    PS3.3 C.12.1.1.8 asks to identify private coding schemes (designators
    beginning with ``99``, or ``L``) in the Coding Scheme Identification
    Sequence; standard ones (DCM, SCT, LN, UCUM...) need no item.
    """
    schemes = sorted({c.scheme for c in used if c.scheme.startswith("99") or c.scheme == "L"})
    if not schemes:
        return None
    return [
        CodingSchemeIdentificationItem(
            designator=scheme,
            name=f"Local codes of {MANUFACTURER} pipelines",
            responsible_organization=MANUFACTURER,
        )
        for scheme in schemes
    ]


def specific_character_set(source: Dataset, texts: Iterable[str]) -> object:
    """Specific Character Set of an object derived from ``source`` that holds ``texts``.

    The source's own (``None`` when it has none) while all of ``texts`` (the
    names, labels and code meanings a writer adds) are ASCII, which every
    character set holds. Otherwise ``ISO_IR 192`` (UTF-8), which holds
    everything, including the source's patient and study values (pydicom
    encodes them anew from their decoded text).
    """
    if all(text.isascii() for text in texts):
        return source.get("SpecificCharacterSet")
    return "ISO_IR 192"


def result_codes(result: PipelineResult) -> list[Code]:
    """Every code of ``result``: segment category, type and region, measurement
    concept and unit, finding concept (repeats kept)."""
    found: list[Code] = []
    for segment in result.segments:
        found += [segment.category, segment.type]
        if segment.anatomic_region is not None:
            found.append(segment.anatomic_region)
    for item in result.measurements:
        found += [item.concept, item.unit]
    found += [finding.concept for finding in result.findings]
    found += [detection.concept for detection in result.detections]
    return found


def result_texts(result: PipelineResult, context: ResultContext) -> list[str]:
    """The texts a writer takes from ``result`` and ``context`` (not from the source)."""
    found = [context.pipeline_name, context.pipeline_version, context.node_name]
    found += [segment.name for segment in result.segments]
    found += [detection.name for detection in result.detections]
    found += [text for code in result_codes(result) for text in (code.value, code.meaning)]
    for model in result.models:
        found += [model.name, model.version, model.sha256]
    return found
