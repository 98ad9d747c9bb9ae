"""HL7 ORU^R01 of a result: built with hl7apy when the results are written,
validated strictly by hl7apy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomnode.export.hl7 import unescape
from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    PipelineResult,
)
from dicomnode.results.oru import (
    PatientContext,
    abnormal,
    control_id_for,
    escape,
    result_status,
)
from tests.export.mllp_ris import unescape as reference_unescape
from tests.results.oru_messages import (
    NASTY_NAME,
    TARGET,
    make_context,
    make_patient,
    make_result,
    make_volume,
    oru,
    segments,
    strict,
)


def test_oru_validates_strictly_and_carries_the_result() -> None:
    message = oru()
    parsed = strict(message)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_10.to_er7() == "MSG-0001"
    assert parsed.msh.msh_12.to_er7() == "2.5.1"
    assert parsed.msh.msh_18.to_er7() == "UNICODE UTF-8"
    assert [s[:3] for s in message.split("\r")] == [
        "MSH", "PID", "ORC", "OBR", "NTE", "TQ1", *["OBX"] * 9
    ]  # fmt: skip
    pid = segments(message, "PID")[0]
    assert pid[3] == "PID-1^^^HOSP"
    assert pid[5] == "Doe^John^Q^III^Dr"  # XPN: family, given, middle, suffix, prefix
    assert (pid[7], pid[8]) == ("19700102", "F")
    obr = segments(message, "OBR")[0]
    assert obr[3] == "ACC-9" and obr[18] == "ACC-9"
    assert obr[4] == "ct-lung^Automated ct-lung 1.0.0^L"
    assert obr[7] == "20240506070000" and obr[22] == "20240506070809+0000"
    assert obr[25] == "P" and obr[27] == "^^^^^S"  # preliminary: nobody verified it
    assert segments(message, "TQ1")[0][9] == "S^Stat^HL70485"
    assert segments(message, "ORC")[0][1] == "RE"
    nte = segments(message, "NTE")[0][3]
    assert "ct-lung 1.0.0" in nte and "nodule-net 2.1" in nte and "ab" * 32 in nte

    obx = {(s[3], s[4]): s for s in segments(message, "OBX")}
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
    assert [s[1] for s in segments(message, "OBX")] == [str(i) for i in range(1, 10)]


def test_negative_result_is_routine_and_flagged_normal() -> None:
    result = make_result(probability=0.1)
    assert not abnormal(result)
    message = oru(result)
    strict(message)
    assert segments(message, "TQ1")[0][9] == "R^Routine^HL70485"
    assert segments(message, "OBR")[0][27] == "^^^^^R"
    nodule = next(s for s in segments(message, "OBX") if s[3].startswith("27925004"))
    assert nodule[8] == "N"
    assert abnormal(make_result(probability=0.5))


def test_pv1_only_when_the_dicom_carries_a_visit() -> None:
    assert "\rPV1|" not in oru()
    message = oru(patient=make_patient(admission_id="V-77", admission_issuer="ADT"))
    strict(message)
    pv1 = segments(message, "PV1")[0]
    assert (pv1[2], pv1[19]) == ("U", "V-77^^^ADT")
    assert [s[:3] for s in message.split("\r")][:3] == ["MSH", "PID", "PV1"]


def test_accession_missing_uses_the_study_uid_as_filler_order() -> None:
    message = oru(patient=make_patient(accession_number=""))
    strict(message)
    obr = segments(message, "OBR")[0]
    assert obr[3] == "1.2.3.4" and obr[18] == ""
    assert segments(message, "ORC")[0][3] == "1.2.3.4"


def test_hl7_delimiters_in_dicom_values_cannot_inject_fields_or_segments() -> None:
    patient = make_patient(
        patient_name=NASTY_NAME + "\nMSH|&~\\EVIL",
        patient_id="ID|1^2",
        issuer="A&B",
        referring_physician="Evil\rOBX|1|ST|X||pwned",
    )
    message = oru(patient=patient)
    strict(message)
    lines = message.split("\r")
    assert len(lines) == 15
    assert [s[:3] for s in lines].count("MSH") == 1
    assert all(s[:3] in {"MSH", "PID", "ORC", "OBR", "NTE", "TQ1", "OBX"} for s in lines)
    pid = segments(message, "PID")[0]
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
    message = oru(patient=make_patient(patient_name="Müller^Jürgen=ミュラー^ユルゲン"))
    strict(message)
    assert segments(message, "PID")[0][5] == "Müller^Jürgen"


def test_study_uid_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="study UID"):
        oru(volume=make_volume("9.9.9"))


def test_bad_control_id_is_refused() -> None:
    for bad in ("", "a\rb", "X" * 21):
        with pytest.raises(ValueError, match="control ID"):
            oru(control_id=bad)


def test_the_control_id_is_the_same_for_a_run_and_destination() -> None:
    """A retry or a replay sends the very same MSH-10; two receivers of one
    run get different ones; the default comes from the job and destination."""
    first = control_id_for(42, "ris")
    assert first == control_id_for(42, "ris") != control_id_for(42, "ris-2")
    assert first != control_id_for(43, "ris")
    assert len(control_id_for(10**13 - 1, "a-very-long-destination-name")) <= 20
    message = oru(control_id=None)
    assert strict(message).msh.msh_10.to_er7() == first


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
    from dicomnode.runner.volume import load_series
    from dicomnode.synthetic import write_ct_series
    from pipelines.ct_lung import CTLungPipeline

    series = write_ct_series(tmp_path / "ct", slices=24, rows=64, columns=64)
    volume = load_series(series.paths)
    pipeline = CTLungPipeline()
    result = pipeline.run(volume, "cpu")
    patient = PatientContext.from_dataset(dcmread(series.paths[0], stop_before_pixels=True))
    context = make_context(pipeline_name=pipeline.name, algorithm=pipeline.algorithm)
    message = oru(result, patient, volume, context=context)
    parsed = strict(message)
    assert parsed.msh.msh_10.to_er7() == "MSG-0001"
    numbers = [s for s in segments(message, "OBX") if s[2] == "NM"]
    assert len(numbers) == len(result.measurements) > 0
    assert {s[6] for s in numbers} <= {"mL^mL^UCUM", "[hnsf'U]^[hnsf'U]^UCUM", "%^%^UCUM"}
    assert segments(message, "OBR")[0][3] == "ACC0001"
    assert segments(message, "OBR")[0][4].startswith("ct-lung^Automated ct-lung ")


def test_only_a_trained_model_result_is_called_ai() -> None:
    """OBR-4 and the provenance note say "AI" only when the pipeline declares
    a trained model; a threshold method is "Automated"."""
    trained = make_context(
        pipeline_name="cxr-classify",
        algorithm=Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True),
    )
    obr = segments(oru(context=trained), "OBR")[0]
    assert obr[4] == "cxr-classify^AI cxr-classify 1.0.0^L"
    plain = segments(oru(), "OBR")[0]
    assert plain[4].startswith("ct-lung^Automated ")
    assert "AI result of pipeline" not in oru()


def _statuses(message: str) -> set[str]:
    """OBR-25 and every OBX-11."""
    return {segments(message, "OBR")[0][25]} | {s[11] for s in segments(message, "OBX")}


def test_an_unverified_result_is_preliminary_and_says_so() -> None:
    message = oru()
    strict(message)
    assert _statuses(message) == {"P"}
    assert "not verified" in segments(message, "NTE")[0][3]
    assert result_status(make_context(), TARGET) == "P"


def test_a_final_rule_gives_final_and_a_replacement_a_correction() -> None:
    final = make_context(final=True)
    message = oru(context=final)
    strict(message)
    assert _statuses(message) == {"F"}
    correction = replace(TARGET, correction=True)
    for context in (make_context(), final):
        message = oru(context=context, target=correction)
        strict(message)
        assert _statuses(message) == {"C"}
        assert "Corrects an earlier result" in segments(message, "NTE")[0][3]
    # a corrected unverified result still says it is not verified
    assert "not verified" in segments(oru(target=correction), "NTE")[0][3]


def test_long_summary_is_cut_into_lines_that_validate() -> None:
    sentence = "The left lower lobe shows a | delimited & escaped finding of note."
    result = PipelineResult(summary=" ".join([sentence] * 8) + "\n" + "x" * 500)
    message = oru(result)
    strict(message)
    summary = next(s for s in segments(message, "OBX") if s[2] == "TX")
    lines = summary[5].split("~")
    assert all(len(line) <= 199 for line in lines)
    assert " ".join(reference_unescape(line) for line in lines[:-3]) == " ".join([sentence] * 8)
    assert "".join(lines[-3:]) == "x" * 500
