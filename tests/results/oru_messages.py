"""ORU^R01 messages for the tests: a result, a patient, a context, built with
:func:`dicomnode.results.oru.build_oru` (the export tests send them)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from dicomnode.protocol import (
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    Code,
    Finding,
    Measurement,
    ModelInfo,
    NotificationTarget,
    PipelineResult,
    ResultContext,
    Segment,
    SliceSource,
    Volume,
)
from dicomnode.results.oru import PatientContext, build_oru

NASTY_NAME = "O'Brien|X^Y&Z~W\\V\rJr"
"""A DICOM PN: family ``O'Brien|X``, given ``Y&Z~W\\V<CR>Jr``."""
MILLILITER = Code("mL", "UCUM", "milliliter")
VOLUME = Code("118565006", "SCT", "Volume")
NODULE = Code("27925004", "SCT", "Nodule")
RIGHT_LUNG = Segment(
    2,
    "Right lung",
    Code("123037004", "SCT", "Anatomical Structure"),
    Code("3341006", "SCT", "Right lung"),
)
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MORPHOLOGY = Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False)
TARGET = NotificationTarget(
    "ris",
    sending_application="DICOMNODE",
    sending_facility="AI",
    receiving_application="RIS",
    receiving_facility="HOSPITAL",
)


def make_result(probability: float = 0.9) -> PipelineResult:
    return PipelineResult(
        segments=(RIGHT_LUNG,),
        measurements=(
            Measurement(VOLUME, 2512.34, MILLILITER, 2),
            Measurement(Code("LAA950", "99DCMNODE", "LAA-950"), 3.5, Code("%", "UCUM", "percent")),
        ),
        findings=(
            Finding(NODULE, probability, threshold=0.5),
            Finding(Code("39607008", "SCT", "Lung"), 0.2),
        ),
        models=(ModelInfo("nodule-net", "2.1", "ab" * 32),),
        summary="Right lung 2512 mL.\nNodule suspected.",
    )


def make_volume(study_uid: str = "1.2.3.4") -> Volume:
    return Volume(
        array=np.zeros((1, 1, 1), dtype=np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, 1.0),
        modality="CT",
        study_instance_uid=study_uid,
        series_instance_uid="1.2.3.4.5",
        frame_of_reference_uid="1.2.3.4.6",
        sources=(SliceSource("1.2.3.4.7", "1.2.840.10008.5.1.4.1.1.2"),),
    )


def make_context(**overrides: Any) -> ResultContext:
    values: dict[str, Any] = {
        "job_id": 42,
        "pipeline_name": "ct-lung",
        "pipeline_version": "1.0.0",
        "source_files": (),
        "out_dir": Path("/nowhere"),
        "node_name": "DICOMNODE",
        "algorithm": MORPHOLOGY,
    }
    values.update(overrides)
    return ResultContext(**values)


def make_patient(**overrides: str) -> PatientContext:
    values = {
        "patient_id": "PID-1",
        "patient_name": "Doe^John^Q^Dr^III",
        "study_instance_uid": "1.2.3.4",
        "issuer": "HOSP",
        "birth_date": "19700102",
        "sex": "F",
        "accession_number": "ACC-9",
        "referring_physician": "House^Gregory",
        "study_date": "20240506",
        "study_time": "070000.123",
    }
    values.update(overrides)
    return PatientContext(**values)


def oru(
    result: PipelineResult | None = None,
    patient: PatientContext | None = None,
    volume: Volume | None = None,
    control_id: str | None = "MSG-0001",
    context: ResultContext | None = None,
    target: NotificationTarget = TARGET,
) -> str:
    return build_oru(
        result if result is not None else make_result(),
        volume or make_volume(),
        patient or make_patient(),
        context or make_context(),
        target,
        sr_uid="1.2.3.4.100",
        seg_uid="1.2.3.4.200",
        timestamp=WHEN,
        control_id=control_id,
    )


def segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def strict(message: str) -> Any:
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.validate()
    return parsed
