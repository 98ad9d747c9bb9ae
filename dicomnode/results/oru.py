"""HL7 v2.5.1 ORU^R01 of a pipeline result: the notification the RIS gets.

:func:`build_oru` turns a :class:`~dicomnode.protocol.PipelineResult` and the
patient/order context read from the source DICOM (:class:`PatientContext`)
into one ER7 message, built with hl7apy. The result writer builds it when the
results are written, for each HL7 destination the rule notifies, and the
outbox keeps it; export sends it as it is (same MSH-10 on every retry).

The message
-----------
::

    MSH  ^~\\&, MSH-9 ORU^R01^ORU_R01, MSH-10 control ID (DN<job>-<destination hash>),
         MSH-11 P, MSH-12 2.5.1, MSH-18 UNICODE UTF-8 (the bytes on the wire are UTF-8)
    PID  PID-3 id^^^issuer, PID-5 name from the DICOM PN, PID-7 birth date, PID-8 sex
    PV1  only when the DICOM carries a visit (AdmissionID): PV1-2 U, PV1-19 visit number
    ORC  ORC-1 RE, ORC-3 filler order number = accession number (else the study UID),
         ORC-9 the result time
    OBR  OBR-3 = ORC-3, OBR-4 <pipeline>^<AI|Automated> <pipeline> <version>^L,
         OBR-7 study date/time (else the result time), OBR-16 referring physician,
         OBR-18 accession number (IHE placer field 1), OBR-22 result time,
         OBR-24 RAD, OBR-25 the result status, OBR-27.6 priority S/R
    NTE  provenance: pipeline name/version, every model's name, version, SHA-256,
         and what the status means (not verified / corrects an earlier result)
    NTE  only for an input outside the pipeline's validated range (the rule flags
         it): NTE-1 2, NTE-3 "Input outside the validated range of the
         pipeline: <reasons>"
    TQ1  TQ1-9 priority S^Stat^HL70485 when a finding is positive, else R^Routine
    OBX  TX   the summary: line breaks become repetitions (TX's hard line break),
              and so do cuts between sentences that keep each line <= 199 characters
    OBX  ST   110180^Study Instance UID^DCM = the study UID
    OBX  CWE  363698007^Finding Site^SCT = the segment's type code (CWE-9: its name),
              OBX-4 = the segment's label: it groups the segment's measurements
    OBX  NM   one per measurement: OBX-3 concept, OBX-5 value, OBX-6 unit^unit^UCUM,
              OBX-4 = the segment's label (empty for whole-volume measurements)
    OBX  NM   one per finding: the probability (unit 1), OBX-7 <threshold,
              OBX-8 A when positive, N when below its threshold
    OBX  NM   one per detection: the score of its concept (unit 1), OBX-4 D<n>,
              OBX-7 <threshold, OBX-8 A
    OBX  TX   BOX^Bounding box^L: where the detection is (OBX-4 D<n>): its central
              slice and the slices, rows and columns it spans, its size in mm
    OBX  RP   126000^Imaging Measurement Report^DCM = the SR's SOP Instance UID^^AP^DICOM
    OBX  RP   SEG^Segmentation^DCM = the SEG's SOP Instance UID^^AP^DICOM

Result status (OBR-25 and every OBX-11): ``P`` (preliminary) unless the rule
says ``result_status: final`` (then ``F``); ``C`` (correction) when the
destination already received a result of the same study, series and pipeline
(see :func:`result_status`).

Escaping
--------
Every value (from DICOM or not) goes through :func:`escape` before it is put
into hl7apy: ``\\`` becomes ``\\E\\`` first, then ``|`` ``\\F\\``, ``^``
``\\S\\``, ``&`` ``\\T\\``, ``~`` ``\\R\\``; line breaks and every other C0
control character (``0x0B`` and ``0x1C`` would end the MLLP frame) become a
space, since ``\\.br\\`` is only defined for FT and hex escapes are rarely
decoded by a RIS. The result holds no delimiter, and its only backslashes
are those of complete ``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\`` sequences, which
hl7apy's own output escaping leaves as they are, so a value cannot add a
field, component or segment.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import textwrap
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from pydicom.dataset import Dataset

from dicomnode.protocol import (
    Code,
    Detection,
    NotificationTarget,
    PipelineResult,
    ResultContext,
    ResultMessage,
    Volume,
)

__all__ = [
    "HL7_VERSION",
    "OUT_OF_RANGE_NOTE",
    "PatientContext",
    "abnormal",
    "build_messages",
    "build_oru",
    "control_id_for",
    "escape",
    "result_status",
]

LOGGER = logging.getLogger(__name__)

HL7_VERSION = "2.5.1"
"""The HL7 version of every message built here."""

#: Coding systems whose HL7 table 0396 name differs from the DICOM designator.
_CODING_SYSTEMS = {"SRT": "SCT", "SNM3": "SNM3", "LN": "LN", "UCUM": "UCUM", "DCM": "DCM"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))

_NM_LENGTH = 16
_LINE_LENGTH = 199
_CONTROL_ID_LENGTH = 20
_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+")

_SEX = {"M": "M", "F": "F", "O": "O"}
_DIGITS = re.compile(r"\d+")

_STUDY_UID_CODE = Code("110180", "DCM", "Study Instance UID")
_SR_CODE = Code("126000", "DCM", "Imaging Measurement Report")
_SEG_CODE = Code("SEG", "DCM", "Segmentation")
_FINDING_SITE = Code("363698007", "SCT", "Finding Site")
_SUMMARY_CODE = Code("SUMMARY", "L", "Result summary")
_BOX_CODE = Code("BOX", "L", "Bounding box")
_PROBABILITY_UNIT = Code("1", "UCUM", "1")


def escape(text: object) -> str:
    """Escape ``text`` for one HL7 value with the default encoding characters.

    Parameters
    ----------
    text : object
        The value; ``str(text)`` is escaped.

    Returns
    -------
    str
        ``text`` with ``\\ | ^ & ~`` replaced by ``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\``
        and line breaks and other control characters by a space.
    """
    value = _CONTROL.sub(" ", _LINE_BREAK.sub(" ", str(text)))
    for char, sequence in _ESCAPES:
        value = value.replace(char, sequence)
    return value


def _components(*values: object) -> str:
    """Escape each value and join them as components; trailing empties dropped."""
    return "^".join(escape(v) for v in values).rstrip("^")


def _coded(code: Code) -> str:
    """A CE/CWE ``value^meaning^system`` for ``code``."""
    return _components(code.value, code.meaning, _CODING_SYSTEMS.get(code.scheme, code.scheme))


def _number(value: float) -> str:
    """An NM value: plain decimal notation (no exponent), at most 4 decimals,
    at most 16 characters (NM's length in 2.5.1)."""
    if math.isfinite(value):
        for decimals in (4, 3, 2, 1, 0):
            text = f"{value:.{decimals}f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            text = "0" if text in ("-0", "") else text
            if len(text) <= _NM_LENGTH:
                return text
    raise ValueError(f"cannot encode {value!r} as an HL7 number")


def _text_lines(text: str) -> list[str]:
    """``text`` as escaped TX lines (repetitions) of at most 199 characters.

    Line breaks start a new line; long lines are cut between sentences, or
    between words when a sentence alone is too long. (hl7apy checks OBX-5
    against ST's length whatever OBX-2 says, and so do some receivers.)
    """
    lines: list[str] = []
    for paragraph in _LINE_BREAK.split(text):
        current = ""
        pieces = [p for p in _SENTENCE_END.split(paragraph.strip()) if p]
        for piece in pieces:
            candidate = f"{current} {piece}" if current else piece
            if len(escape(candidate)) <= _LINE_LENGTH:
                current = candidate
                continue
            if current:
                lines.append(escape(current))
            width = _LINE_LENGTH
            while True:
                words = textwrap.wrap(piece, width=width, break_long_words=True)
                if all(len(escape(w)) <= _LINE_LENGTH for w in words):
                    break
                width //= 2
            lines += [escape(w) for w in words[:-1]]
            current = words[-1] if words else ""
        if current:
            lines.append(escape(current))
    return lines


def _hl7_time(moment: datetime) -> str:
    """A DTM with seconds, and the UTC offset when ``moment`` has one."""
    text = moment.strftime("%Y%m%d%H%M%S")
    if moment.tzinfo is not None and moment.utcoffset() is not None:
        text += moment.strftime("%z")
    return text


def _dicom_date(value: str) -> str:
    """A DICOM DA as an HL7 date, or ``""`` when it is not ``YYYYMMDD``."""
    value = value.strip()
    return value if len(value) == 8 and value.isdigit() else ""


def _dicom_time(value: str) -> str:
    """The ``HH[MM[SS]]`` digits of a DICOM TM, or ``""``."""
    match = _DIGITS.match(value.strip())
    digits = match.group(0) if match else ""
    return digits[:6] if len(digits) in (2, 4, 6) else ""


@dataclass(frozen=True)
class PatientContext:
    """What the ORU needs from the source DICOM (raw, unescaped values).

    Attributes
    ----------
    patient_id : str
        PatientID; required.
    issuer : str
        IssuerOfPatientID (may be empty).
    patient_name : str
        PatientName as a DICOM PN string, e.g. ``"Doe^John"``.
    birth_date : str
        PatientBirthDate, ``YYYYMMDD`` or empty.
    sex : str
        PatientSex: ``M``, ``F``, ``O`` or empty.
    accession_number : str
        AccessionNumber (may be empty; the study UID stands in for it).
    study_instance_uid : str
        StudyInstanceUID; required.
    study_description : str
    referring_physician : str
        ReferringPhysicianName, a PN string.
    admission_id : str
        AdmissionID: the visit number; a PV1 is written only when it is set.
    admission_issuer : str
        IssuerOfAdmissionIDSequence's LocalNamespaceEntityID, when present.
    study_date, study_time : str
        StudyDate (DA) and StudyTime (TM), for OBR-7.
    """

    patient_id: str
    patient_name: str
    study_instance_uid: str
    issuer: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    study_description: str = ""
    referring_physician: str = ""
    admission_id: str = ""
    admission_issuer: str = ""
    study_date: str = ""
    study_time: str = ""

    def __post_init__(self) -> None:
        for name in ("patient_id", "study_instance_uid"):
            if not getattr(self, name).strip():
                raise ValueError(f"PatientContext.{name} must not be empty")

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PatientContext:
        """Read the context from one source instance's header.

        Raises
        ------
        ValueError
            If PatientID or StudyInstanceUID is missing or empty.
        """

        def text(keyword: str) -> str:
            value = ds.get(keyword)
            return "" if value is None else str(value).strip()

        admission_issuer = ""
        issuers = ds.get("IssuerOfAdmissionIDSequence")
        if issuers:
            admission_issuer = str(issuers[0].get("LocalNamespaceEntityID", "") or "").strip()
        return cls(
            patient_id=text("PatientID"),
            patient_name=text("PatientName"),
            study_instance_uid=text("StudyInstanceUID"),
            issuer=text("IssuerOfPatientID"),
            birth_date=text("PatientBirthDate"),
            sex=text("PatientSex").upper(),
            accession_number=text("AccessionNumber"),
            study_description=text("StudyDescription"),
            referring_physician=text("ReferringPhysicianName"),
            admission_id=text("AdmissionID"),
            admission_issuer=admission_issuer,
            study_date=text("StudyDate"),
            study_time=text("StudyTime"),
        )


def _person_name(pn: str) -> tuple[str, str, str, str, str]:
    """(family, given, middle, prefix, suffix) of the alphabetic group of a DICOM PN."""
    alphabetic = pn.split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    if len(parts) > 5:  # not a valid PN: keep everything, in the suffix
        parts = [*parts[:4], " ".join(parts[4:])]
    parts += [""] * (5 - len(parts))
    return parts[0], parts[1], parts[2], parts[3], parts[4]


def abnormal(result: PipelineResult) -> bool:
    """Whether any finding of ``result`` is positive (reaches its threshold), or
    anything was detected."""
    return any(finding.positive for finding in result.findings) or bool(result.detections)


def _box_text(detection: Detection, volume: Volume) -> str:
    """Where a detection is, for a reader: its central slice, the slices, rows
    and columns it spans (1-based) and its size in mm."""
    s0, r0, c0, s1, r1, c1 = detection.box
    slices, rows, columns = volume.array.shape
    size = " x ".join(
        f"{(b - a) * spacing:.1f}"
        for a, b, spacing in ((c0, c1, volume.spacing[2]), (r0, r1, volume.spacing[1]),
                              (s0, s1, volume.spacing[0]))
    )  # fmt: skip
    name = detection.name or detection.concept.meaning
    return (
        f"{name}: central slice {int((s0 + s1) / 2) + 1} of {slices}, slices "
        f"{int(s0) + 1}-{math.ceil(s1)}, rows {int(r0) + 1}-{math.ceil(r1)} of {rows}, "
        f"columns {int(c0) + 1}-{math.ceil(c1)} of {columns}; {size} mm"
    )


def control_id_for(job_id: int, destination: str) -> str:
    """The message control ID (MSH-10) of a run's notification to ``destination``.

    ``DN<job id>-<4 hex digits of the destination name's SHA-256>``: the same
    run and destination always give the same ID, two destinations of one run
    different ones; at most 20 characters for job ids below 10**13.
    """
    digest = hashlib.sha256(destination.encode("utf-8")).hexdigest()[:4].upper()
    return f"DN{job_id}-{digest}"


def result_status(context: ResultContext, target: NotificationTarget) -> str:
    """OBR-25 / OBX-11 of the ORU for ``target``: ``C`` when it replaces a
    result the destination already received, else ``F`` when the rule says
    its results are final, else ``P``."""
    if target.correction:
        return "C"
    return "F" if context.final else "P"


def build_oru(
    result: PipelineResult,
    volume: Volume,
    patient: PatientContext,
    context: ResultContext,
    target: NotificationTarget,
    *,
    sr_uid: str | None,
    seg_uid: str | None,
    timestamp: datetime,
    control_id: str | None = None,
) -> str:
    """Build the ORU^R01 (HL7 2.5.1) of one pipeline result for one receiver.

    Parameters
    ----------
    result : PipelineResult
        Measurements, findings, segments, models and summary.
    volume : Volume
        The input volume (its study must be the patient context's).
    patient : PatientContext
        Patient and order, read from the source DICOM.
    context : ResultContext
        The pipeline's name, version and algorithm (OBR-4 says "AI" only for
        a trained model, else "Automated"), the run's job id and whether its
        results are final.
    target : NotificationTarget
        MSH-3 to MSH-6, and whether this result corrects an earlier one.
    sr_uid, seg_uid : str or None
        SOP Instance UIDs of the SR and SEG written for this result.
    timestamp : datetime
        When the result was made: MSH-7, ORC-9, OBR-22 (and OBR-7 without a study date).
    control_id : str, optional
        MSH-10; by default :func:`control_id_for` the job and the destination.

    Returns
    -------
    str
        The ER7 message, segments separated by ``\\r``.

    Raises
    ------
    ValueError
        If the inputs cannot make a valid message: a control ID that is empty,
        longer than 20 characters or holds control characters, a volume of
        another study than the patient context's, a number HL7 cannot hold.
    """
    if control_id is None:
        control_id = control_id_for(context.job_id, target.destination)
    if not control_id or len(control_id) > _CONTROL_ID_LENGTH or _CONTROL.search(control_id):
        raise ValueError(f"invalid MSH-10 control ID {control_id!r}")
    if volume.study_instance_uid != patient.study_instance_uid:
        raise ValueError("the result's study UID differs from the patient context's study UID")
    pipeline = context.pipeline_name
    version = context.pipeline_version
    wording = context.algorithm.label
    status = result_status(context, target)
    now = _hl7_time(timestamp)
    study_time = _dicom_date(patient.study_date)
    if study_time:
        study_time += _dicom_time(patient.study_time)
    order_number = patient.accession_number or patient.study_instance_uid
    urgent = abnormal(result)

    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    msh = message.msh
    msh.msh_3 = escape(target.sending_application)
    msh.msh_4 = escape(target.sending_facility)
    msh.msh_5 = escape(target.receiving_application)
    msh.msh_6 = escape(target.receiving_facility)
    msh.msh_7 = now
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = escape(control_id)
    msh.msh_11 = "P"
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = "UNICODE UTF-8"

    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    patient_group = patient_result.add_group("ORU_R01_PATIENT")
    pid = patient_group.add_segment("PID")
    pid.pid_1 = "1"
    pid.pid_3 = _components(patient.patient_id, "", "", patient.issuer)
    family, given, middle, prefix, suffix = _person_name(patient.patient_name)
    name = _components(family, given, middle, suffix, prefix)
    if name:
        pid.pid_5 = name
    birth = _dicom_date(patient.birth_date)
    if birth:
        pid.pid_7 = birth
    sex = _SEX.get(patient.sex, "U" if patient.sex else "")
    if sex:
        pid.pid_8 = sex
    if patient.admission_id:
        visit = patient_group.add_group("ORU_R01_VISIT")
        pv1 = visit.add_segment("PV1")
        pv1.pv1_1 = "1"
        pv1.pv1_2 = "U"
        pv1.pv1_19 = _components(patient.admission_id, "", "", patient.admission_issuer)

    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = order.add_segment("ORC")
    orc.orc_1 = "RE"
    orc.orc_3 = escape(order_number)
    orc.orc_9 = now

    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    obr.obr_3 = escape(order_number)
    obr.obr_4 = _components(pipeline, f"{wording} {pipeline} {version}".strip(), "L")
    obr.obr_7 = study_time or now
    referring = _person_name(patient.referring_physician)
    if any(referring):
        family, given, middle, prefix, suffix = referring
        obr.obr_16 = _components("", family, given, middle, suffix, prefix)
    if patient.accession_number:
        obr.obr_18 = escape(patient.accession_number)
    obr.obr_22 = now
    obr.obr_24 = "RAD"
    obr.obr_25 = status
    obr.obr_27 = "^^^^^" + ("S" if urgent else "R")

    nte = order.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_2 = "O"
    nte.nte_3 = escape(_provenance(result, context, patient.study_description, status))
    if context.out_of_range:
        flag = order.add_segment("NTE")
        flag.nte_1 = "2"
        flag.nte_2 = "O"
        flag.nte_3 = escape(OUT_OF_RANGE_NOTE + "; ".join(context.out_of_range))

    timing = order.add_group("ORU_R01_TIMING_QTY")
    tq1 = timing.add_segment("TQ1")
    tq1.tq1_1 = "1"
    tq1.tq1_9 = "S^Stat^HL70485" if urgent else "R^Routine^HL70485"

    observations = _Observations(order, status, study_time or now)
    if result.summary:
        observations.add("TX", _coded(_SUMMARY_CODE), *_text_lines(result.summary))
    observations.add("ST", _coded(_STUDY_UID_CODE), escape(patient.study_instance_uid))
    segments = {s.label: s for s in result.segments}
    measured = sorted({m.segment_label for m in result.measurements if m.segment_label})
    for label in measured:
        segment = segments.get(label)
        if segment is not None:
            site = _components(
                segment.type.value,
                segment.type.meaning,
                _CODING_SYSTEMS.get(segment.type.scheme, segment.type.scheme),
                "",
                "",
                "",
                "",
                "",
                segment.name,
            )
            observations.add("CWE", _coded(_FINDING_SITE), site, sub_id=str(label))
    for measurement in result.measurements:
        observations.add(
            "NM",
            _coded(measurement.concept),
            _number(measurement.value),
            sub_id="" if measurement.segment_label is None else str(measurement.segment_label),
            units=_components(measurement.unit.value, measurement.unit.value, "UCUM"),
        )
    for finding in result.findings:
        flag = ""
        if finding.threshold is not None:
            flag = "A" if finding.positive else "N"
        observations.add(
            "NM",
            _coded(finding.concept),
            _number(finding.probability),
            units=_components("1", "1", "UCUM"),
            reference_range=(
                "" if finding.threshold is None else escape(f"<{_number(finding.threshold)}")
            ),
            flag=flag,
        )
    for number, detection in enumerate(result.detections, start=1):
        observations.add(
            "NM",
            _coded(detection.concept),
            _number(detection.score),
            sub_id=f"D{number}",
            units=_components("1", "1", "UCUM"),
            reference_range=(
                "" if detection.threshold is None else escape(f"<{_number(detection.threshold)}")
            ),
            flag="A",
        )
        observations.add(
            "TX", _coded(_BOX_CODE), escape(_box_text(detection, volume)), sub_id=f"D{number}"
        )
    for uid, code in ((sr_uid, _SR_CODE), (seg_uid, _SEG_CODE)):
        if uid:
            observations.add("RP", _coded(code), _components(uid, "", "AP", "DICOM"))

    er7: str = message.to_er7()
    return er7


def build_messages(
    result: PipelineResult,
    volume: Volume,
    source: Dataset,
    context: ResultContext,
    *,
    sr_uid: str | None,
    seg_uid: str | None,
    timestamp: datetime,
) -> tuple[ResultMessage, ...]:
    """One ORU^R01 for each of ``context.notifications``.

    Parameters
    ----------
    result, volume, context
        As for :func:`build_oru`.
    source : Dataset
        A source instance's header: the patient and the order.
    sr_uid, seg_uid : str or None
        The SR and SEG written for ``result``: each message names them, and
        is sent only once they reached the run's DICOM destinations.
    timestamp : datetime
        When the result was made.

    Returns
    -------
    tuple of ResultMessage
        In the order of ``context.notifications``.
    """
    if not context.notifications:
        return ()
    patient = PatientContext.from_dataset(source)
    refers_to = tuple(uid for uid in (sr_uid, seg_uid) if uid)
    messages = []
    for target in context.notifications:
        control_id = control_id_for(context.job_id, target.destination)
        body = build_oru(
            result,
            volume,
            patient,
            context,
            target,
            sr_uid=sr_uid,
            seg_uid=seg_uid,
            timestamp=timestamp,
            control_id=control_id,
        )
        messages.append(ResultMessage(target.destination, control_id, body, refers_to))
    return tuple(messages)


OUT_OF_RANGE_NOTE = "Input outside the validated range of the pipeline: "
"""How the ORU's second NTE begins, for a result of an input outside the range."""


def _provenance(
    result: PipelineResult, context: ResultContext, description: str, status: str
) -> str:
    label = context.algorithm.label
    parts = [
        f"{label} result of pipeline {context.pipeline_name} {context.pipeline_version}".rstrip()
        + "."
    ]
    for model in result.models:
        parts.append(f"Model {model.name} {model.version} (SHA-256 {model.sha256}).")
    if status == "C":
        parts.append("Corrects an earlier result of this pipeline for this series.")
    parts.append(
        "Final result (the site counts these results as verified)."
        if context.final
        else "Preliminary result, not verified by a physician."
    )
    if description:
        parts.append(f"Study: {description}.")
    return " ".join(parts)


class _Observations:
    """Adds numbered OBX segments to one ORDER_OBSERVATION group."""

    def __init__(self, order: Any, status: str, observed: str) -> None:
        self._order = order
        self._status = status
        self._observed = observed
        self._count = 0

    def add(
        self,
        value_type: str,
        identifier: str,
        *values: str,
        sub_id: str = "",
        units: str = "",
        reference_range: str = "",
        flag: str = "",
    ) -> None:
        self._count += 1
        obx = self._order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(self._count)
        obx.obx_2 = value_type
        obx.obx_3 = identifier
        if sub_id:
            obx.obx_4 = sub_id
        for value in values:  # repetitions (TX: one per line)
            obx.add_field("OBX_5").value = value
        if units:
            obx.obx_6 = units
        if reference_range:
            obx.obx_7 = reference_range
        if flag:
            obx.obx_8 = flag
        obx.obx_11 = self._status
        obx.obx_14 = self._observed
