"""HL7 ORU^R01: built with hl7apy, validated by hl7apy, delivered over MLLP to
hl7apy's MLLP server acting as the RIS on loopback."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom import dcmread

from dicomnode.errors import (
    ExportError,
    HL7ConnectionError,
    HL7Error,
    HL7NackError,
    HL7TimeoutError,
)
from dicomnode.export.hl7 import (
    AckResult,
    PatientContext,
    abnormal,
    build_oru,
    classify,
    deliver,
    escape,
    message_control_id,
    send_mllp,
    unescape,
)
from dicomnode.protocol import Code, Finding, Measurement, ModelInfo, PipelineResult, Segment
from tests.export.mllp_ris import running_ris
from tests.export.mllp_ris import unescape as reference_unescape

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


def _result(probability: float = 0.9) -> PipelineResult:
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


def _document(study_uid: str = "1.2.3.4") -> dict[str, Any]:
    return {
        "pipeline": {"name": "ct-lung", "version": "1.0.0"},
        "volume": {"study_instance_uid": study_uid},
    }


def _patient(**overrides: str) -> PatientContext:
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


def _oru(
    result: PipelineResult | None = None,
    patient: PatientContext | None = None,
    document: dict[str, Any] | None = None,
    control_id: str = "MSG-0001",
) -> str:
    return build_oru(
        result if result is not None else _result(),
        document if document is not None else _document(),
        patient or _patient(),
        control_id=control_id,
        sending_application="DICOMNODE",
        sending_facility="AI",
        receiving_application="RIS",
        receiving_facility="HOSPITAL",
        sr_uid="1.2.3.4.100",
        seg_uid="1.2.3.4.200",
        timestamp=WHEN,
    )


def _segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def _strict(message: str) -> Any:
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.validate()
    return parsed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- building ---------------------------------------------------------------------------


def test_oru_validates_strictly_and_carries_the_result() -> None:
    message = _oru()
    parsed = _strict(message)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_10.to_er7() == "MSG-0001"
    assert parsed.msh.msh_12.to_er7() == "2.5.1"
    assert parsed.msh.msh_18.to_er7() == "UNICODE UTF-8"
    assert [s[:3] for s in message.split("\r")] == [
        "MSH", "PID", "ORC", "OBR", "NTE", "TQ1", *["OBX"] * 9
    ]  # fmt: skip
    pid = _segments(message, "PID")[0]
    assert pid[3] == "PID-1^^^HOSP"
    assert pid[5] == "Doe^John^Q^III^Dr"  # XPN: family, given, middle, suffix, prefix
    assert (pid[7], pid[8]) == ("19700102", "F")
    obr = _segments(message, "OBR")[0]
    assert obr[3] == "ACC-9" and obr[18] == "ACC-9"
    assert obr[4] == "ct-lung^Automated ct-lung 1.0.0^L"
    assert obr[7] == "20240506070000" and obr[22] == "20240506070809+0000"
    assert obr[25] == "F" and obr[27] == "^^^^^S"
    assert _segments(message, "TQ1")[0][9] == "S^Stat^HL70485"
    assert _segments(message, "ORC")[0][1] == "RE"
    nte = _segments(message, "NTE")[0][3]
    assert "ct-lung 1.0.0" in nte and "nodule-net 2.1" in nte and "ab" * 32 in nte

    obx = {(s[3], s[4]): s for s in _segments(message, "OBX")}
    volume = obx[("118565006^Volume^SCT", "2")]
    assert (volume[2], volume[5], volume[6]) == ("NM", "2512.34", "mL^mL^UCUM")
    site = obx[("363698007^Finding Site^SCT", "2")]
    assert site[5] == "3341006^Right lung^SCT^^^^^^Right lung"
    laa = obx[("LAA950^LAA-950^99DCMNODE", "")]
    assert (laa[5], laa[6]) == ("3.5", "%^%^UCUM")
    nodule = obx[("27925004^Nodule^SCT", "")]
    assert (nodule[2], nodule[5], nodule[7], nodule[8]) == ("NM", "0.9", "<0.5", "A")
    assert obx[("39607008^Lung^SCT", "")][8] == ""  # no threshold, no flag
    assert obx[("110180^Study Instance UID^DCM", "")][5] == "1.2.3.4"
    assert obx[("126000^Imaging Measurement Report^DCM", "")][5] == "1.2.3.4.100^^AP^DICOM"
    assert obx[("SEG^Segmentation^DCM", "")][5] == "1.2.3.4.200^^AP^DICOM"
    summary = obx[("SUMMARY^Result summary^L", "")]
    assert summary[2] == "TX" and summary[5] == "Right lung 2512 mL.~Nodule suspected."
    assert [s[1] for s in _segments(message, "OBX")] == [str(i) for i in range(1, 10)]


def test_negative_result_is_routine_and_flagged_normal() -> None:
    result = _result(probability=0.1)
    assert not abnormal(result)
    message = _oru(result)
    _strict(message)
    assert _segments(message, "TQ1")[0][9] == "R^Routine^HL70485"
    assert _segments(message, "OBR")[0][27] == "^^^^^R"
    nodule = next(s for s in _segments(message, "OBX") if s[3].startswith("27925004"))
    assert nodule[8] == "N"
    assert abnormal(_result(probability=0.5))


def test_pv1_only_when_the_dicom_carries_a_visit() -> None:
    assert "\rPV1|" not in _oru()
    message = _oru(patient=_patient(admission_id="V-77", admission_issuer="ADT"))
    _strict(message)
    pv1 = _segments(message, "PV1")[0]
    assert (pv1[2], pv1[19]) == ("U", "V-77^^^ADT")
    assert [s[:3] for s in message.split("\r")][:3] == ["MSH", "PID", "PV1"]


def test_accession_missing_uses_the_study_uid_as_filler_order() -> None:
    message = _oru(patient=_patient(accession_number=""))
    _strict(message)
    obr = _segments(message, "OBR")[0]
    assert obr[3] == "1.2.3.4" and obr[18] == ""
    assert _segments(message, "ORC")[0][3] == "1.2.3.4"


def test_hl7_delimiters_in_dicom_values_cannot_inject_fields_or_segments() -> None:
    patient = _patient(
        patient_name=NASTY_NAME + "\nMSH|&~\\EVIL",
        patient_id="ID|1^2",
        issuer="A&B",
        referring_physician="Evil\rOBX|1|ST|X||pwned",
    )
    message = _oru(patient=patient)
    _strict(message)
    segments = message.split("\r")
    assert len(segments) == 15
    assert [s[:3] for s in segments].count("MSH") == 1
    assert all(s[:3] in {"MSH", "PID", "ORC", "OBR", "NTE", "TQ1", "OBX"} for s in segments)
    pid = _segments(message, "PID")[0]
    assert len(pid) == 9  # PID-0..PID-8: no extra field
    family, given = pid[5].split("^")
    assert reference_unescape(family) == "O'Brien|X"
    assert reference_unescape(given) == "Y&Z~W\\V Jr MSH|&~\\EVIL"
    assert reference_unescape(pid[3].split("^")[0]) == "ID|1^2"
    assert reference_unescape(pid[3].split("^")[3]) == "A&B"


def test_escape_round_trip_and_framing_characters() -> None:
    text = "a|b^c&d~e\\f \\F\\ g\x0b\x1c\rh"
    escaped = escape(text)
    assert not set("|^&~\r\n\x0b\x1c") & set(escaped)
    assert unescape(escaped) == reference_unescape(escaped) == "a|b^c&d~e\\f \\F\\ g   h"
    assert unescape("x\\X0D0A\\y\\.br\\z") == "x\r\ny\nz"


def test_non_ascii_name_is_utf8() -> None:
    message = _oru(patient=_patient(patient_name="Müller^Jürgen=ミュラー^ユルゲン"))
    _strict(message)
    assert _segments(message, "PID")[0][5] == "Müller^Jürgen"


def test_study_uid_mismatch_is_refused() -> None:
    with pytest.raises(HL7Error) as info:
        _oru(document=_document("9.9.9"))
    assert info.value.permanent


def test_bad_control_id_is_refused() -> None:
    with pytest.raises(HL7Error):
        _oru(control_id="")
    with pytest.raises(HL7Error):
        _oru(control_id="a\rb")


def test_patient_context_from_dataset(tmp_path: Path) -> None:
    from dicomnode.synthetic import write_ct_series

    series = write_ct_series(tmp_path, slices=2, rows=16, columns=16, patient_name="Doe^Jane")
    ds = dcmread(series.paths[0], stop_before_pixels=True)
    ds.AdmissionID = "ADM-1"
    ds.IssuerOfPatientID = "HOSP"
    context = PatientContext.from_dataset(ds)
    assert context.patient_id == "PHANTOM-001"
    assert context.patient_name == "Doe^Jane"
    assert context.accession_number == "ACC0001"
    assert context.study_instance_uid == series.study_uid
    assert (context.admission_id, context.issuer) == ("ADM-1", "HOSP")


@pytest.mark.slow
def test_oru_from_a_ct_lung_result(tmp_path: Path) -> None:
    from dicomnode.resultfile import load_result, save_result
    from dicomnode.runner.volume import load_series
    from dicomnode.synthetic import write_ct_series
    from pipelines.ct_lung import CTLungPipeline

    series = write_ct_series(tmp_path / "ct", slices=24, rows=64, columns=64)
    volume = load_series(series.paths)
    pipeline = CTLungPipeline()
    result = pipeline.run(volume, "cpu")
    save_result(
        result, volume, tmp_path / "result", pipeline="ct-lung", version="1.0.0",
        algorithm=pipeline.algorithm, device="cpu",
        seconds=1.0,
    )  # fmt: skip
    loaded, document = load_result(tmp_path / "result")
    patient = PatientContext.from_dataset(dcmread(series.paths[0], stop_before_pixels=True))
    message = _oru(loaded, patient, document)
    parsed = _strict(message)
    assert parsed.msh.msh_10.to_er7() == "MSG-0001"
    numbers = [s for s in _segments(message, "OBX") if s[2] == "NM"]
    assert len(numbers) == len(loaded.measurements) > 0
    assert {s[6] for s in numbers} <= {"mL^mL^UCUM", "[hnsf'U]^[hnsf'U]^UCUM", "%^%^UCUM"}
    assert _segments(message, "OBR")[0][3] == "ACC0001"
    with running_ris("AA") as ris:
        ack = deliver(message, "127.0.0.1", ris.port, timeout=10)
    assert ack.code == "AA" and ris.messages() == [message]


# --- delivery over MLLP -------------------------------------------------------------------


def test_aa_is_delivered_and_the_ris_got_exactly_that_message() -> None:
    message = _oru()
    with running_ris("AA") as ris:
        ack = deliver(message, "127.0.0.1", ris.port, timeout=5)
        received = ris.messages()
    assert (ack.code, ack.control_id) == ("AA", "MSG-0001")
    assert received == [message]
    _strict(received[0])


def test_ae_is_a_permanent_failure_with_its_reason() -> None:
    with running_ris("AE", reason="Unknown patient | PID-1") as ris:
        with pytest.raises(HL7NackError) as info:
            deliver(_oru(), "127.0.0.1", ris.port, timeout=5)
    error = info.value
    assert error.permanent and error.code == "AE"
    assert error.reason == "Unknown patient | PID-1"
    assert "Unknown patient | PID-1" in str(error)
    assert isinstance(error, ExportError)


def test_ar_is_retryable_and_the_retry_sends_the_same_message() -> None:
    message = _oru()
    with running_ris("AR", reason="busy") as ris:
        for _ in range(2):
            with pytest.raises(HL7NackError) as info:
                deliver(message, "127.0.0.1", ris.port, timeout=5)
            assert not info.value.permanent and info.value.code == "AR"
        received = ris.messages()
    assert received == [message, message]
    assert {message_control_id(m) for m in received} == {"MSG-0001"}


def test_wrong_control_id_is_retryable() -> None:
    with running_ris("wrong-id") as ris:
        with pytest.raises(HL7NackError) as info:
            deliver(_oru(), "127.0.0.1", ris.port, timeout=5)
    assert not info.value.permanent
    assert info.value.code == "AA" and info.value.control_id == "NOT-MSG-0001"


def test_no_answer_times_out_within_the_deadline() -> None:
    timeout = 1.0
    with running_ris("none") as ris:
        started = time.monotonic()
        with pytest.raises(HL7TimeoutError) as info:
            send_mllp(_oru(), "127.0.0.1", ris.port, timeout=timeout)
        elapsed = time.monotonic() - started
        assert len(ris.messages()) == 1
    assert not info.value.permanent
    assert timeout - 0.05 <= elapsed < timeout + 1.0


def test_a_trickling_peer_cannot_stretch_the_deadline() -> None:
    """A peer sending one byte at a time (never an end block) still hits the deadline."""
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"\x0bMSH|")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(HL7TimeoutError):
            send_mllp(_oru(), "127.0.0.1", port, timeout=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        server.close()
        thread.join(2)


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(HL7ConnectionError) as info:
        send_mllp(_oru(), "127.0.0.1", _free_port(), timeout=2)
    assert not info.value.permanent and isinstance(info.value, HL7Error)


def test_delimiters_and_non_ascii_arrive_intact_at_the_ris() -> None:
    name = f"{NASTY_NAME}^Müller"  # family, given, middle
    message = _oru(patient=_patient(patient_name=name))
    with running_ris("AA") as ris:
        deliver(message, "127.0.0.1", ris.port, timeout=5)
        received = ris.messages()
    assert received == [message]
    parsed = _strict(received[0])
    pid_5 = parsed.oru_r01_patient_result.oru_r01_patient.pid.pid_5
    components = [reference_unescape(c.to_er7()) for c in (pid_5.xpn_1, pid_5.xpn_2, pid_5.xpn_3)]
    assert "^".join(components) == name.replace("\r", " ")
    assert components == ["O'Brien|X", "Y&Z~W\\V Jr", "Müller"]
    assert len(received[0].split("\r")) == len(message.split("\r")) == 15
    assert len(_segments(received[0], "PID")[0]) == 9


def test_classify() -> None:
    assert classify(AckResult("CA", "X", ""), "X").code == "CA"
    for code, permanent in (("CE", True), ("CR", False), ("", False), ("ZZ", False)):
        with pytest.raises(HL7NackError) as info:
            classify(AckResult(code, "X", "why"), "X")
        assert info.value.permanent is permanent
    with pytest.raises(HL7NackError) as info:
        classify(AckResult("AE", "Y", "why"), "X")
    assert not info.value.permanent  # an ACK for another message says nothing about ours


def test_long_summary_is_cut_into_lines_that_validate() -> None:
    sentence = "The left lower lobe shows a | delimited & escaped finding of note."
    result = PipelineResult(summary=" ".join([sentence] * 8) + "\n" + "x" * 500)
    message = _oru(result)
    _strict(message)
    summary = next(s for s in _segments(message, "OBX") if s[2] == "TX")
    lines = summary[5].split("~")
    assert all(len(line) <= 199 for line in lines)
    assert " ".join(reference_unescape(line) for line in lines[:-3]) == " ".join([sentence] * 8)
    assert "".join(lines[-3:]) == "x" * 500


def test_ack_parsing_is_tolerant() -> None:
    from dicomnode.export.hl7 import parse_ack

    ack = parse_ack("MSH|^~\\&|RIS|H|||20240101||ACK|9|P|2.3\nMSA|AE|C7|Bad \\F\\ field\n")
    assert (ack.code, ack.control_id, ack.text) == ("AE", "C7", "Bad | field")
    ack = parse_ack("MSH|^~\\&|RIS\rMSA|AR|C7\rERR|||207^Busy^HL70357|E\r")
    assert (ack.code, ack.text) == ("AR", "Busy")
    with pytest.raises(HL7Error) as info:
        parse_ack("MSH|^~\\&|RIS\r")
    assert not info.value.permanent


def test_only_a_trained_model_result_is_called_ai() -> None:
    """OBR-4 and the provenance note say "AI" only when result.json says the
    pipeline ran a trained model; a threshold method is "Automated"."""
    trained = _document()
    trained["pipeline"] = {
        "name": "cxr-classify",
        "version": "1.0.0",
        "algorithm": {
            "family": {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"},
            "trained_model": True,
        },
    }
    obr = _segments(_oru(document=trained), "OBR")[0]
    assert obr[4] == "cxr-classify^AI cxr-classify 1.0.0^L"
    plain = _segments(_oru(), "OBR")[0]
    assert plain[4].startswith("ct-lung^Automated ")
    assert "AI result of pipeline" not in _oru()
