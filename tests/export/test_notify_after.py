"""Results say what they are, in the order they can be trusted, with real peers
on loopback: Orthanc as the PACS (down at first), hl7apy's MLLP server as the
RIS. The RIS hears of a result only once the PACS holds the objects the ORU
names; an unverified result travels as preliminary and a replacement as a
correction, and the SR says the same."""

from __future__ import annotations

import threading
from typing import Any

import pydicom
import pytest

from dicomnode.jobs import Job, JobState, SQLiteJobStore
from tests.conftest import open_store
from tests.export.mllp_ris import running_ris
from tests.export.test_faults import (
    dicom_destination,
    hl7_destination,
    sections,
    the_run,
    wait_settled,
)
from tests.helpers import storescu, wait_for
from tests.orthanc import Orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]

SR_CODE = "126000^Imaging Measurement Report^DCM"
SEG_CODE = "SEG^Segmentation^DCM"


def fields(message: str, name: str) -> list[list[str]]:
    """The fields of every ``name`` segment of an ER7 message."""
    lines = message.replace("\n", "\r").split("\r")
    return [line.split("|") for line in lines if line.startswith(name + "|")]


def named_objects(message: str) -> dict[str, str]:
    """The SOP Instance UIDs an ORU names in its RP observations, by code."""
    return {
        obx[3]: obx[5].split("^")[0]
        for obx in fields(message, "OBX")
        if obx[2] == "RP" and obx[3] in (SR_CODE, SEG_CODE)
    }


def statuses(message: str) -> set[str]:
    """OBR-25 and every OBX-11."""
    return {fields(message, "OBR")[0][25]} | {obx[11] for obx in fields(message, "OBX")}


def objects_failed(store: SQLiteJobStore, times: int) -> Job | None:
    """The run once every object's delivery failed ``times`` times or more."""
    run = the_run(store)
    if run is None or run.state != JobState.EXPORTING:
        return None
    rows = [i for i in store.outbox(run.id) if i.kind == "dicom"]
    return run if rows and all(i.attempts >= times for i in rows) else None


def test_the_ris_hears_only_after_the_pacs_has_the_objects(
    make_settings: Any, start_node: Any, ct_series: Any, tmp_path: Any
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")  # not started: the PACS is down
    in_pacs_when_heard: list[dict[str, bool]] = []
    lock = threading.Lock()

    def look_in_the_pacs(message: str) -> None:
        """At the moment the RIS receives the ORU: does the PACS hold what it names?"""
        held = {}
        for code, uid in named_objects(message).items():
            try:
                held[code] = bool(orthanc.post("/tools/lookup", uid))
            except OSError:
                held[code] = False
        with lock:
            in_pacs_when_heard.append(held)

    try:
        with running_ris("AA", on_message=look_in_the_pacs) as ris:
            settings = make_settings(
                **sections(
                    {
                        "pacs": dicom_destination("ORTHANC", orthanc.dicom_port),
                        "ris": hl7_destination(ris.port),
                    },
                    ["pacs"],
                    ["ris"],
                )
            )
            start_node(settings)
            series = ct_series(slices=24, size=64)
            assert storescu(series.paths, settings.node.port).returncode == 0
            store = open_store(settings)
            run = wait_for(lambda: objects_failed(store, 2), 60, "failed deliveries to the PACS")
            # the PACS refused twice; the RIS has heard nothing and nothing was tried
            assert ris.messages() == []
            (waiting,) = [i for i in store.outbox(run.id) if i.kind == "notification"]
            assert (waiting.state, waiting.attempts) == ("PENDING", 0)

            orthanc.start()
            run = wait_settled(store, timeout=60)
            assert run.state == JobState.DONE, run.reason
            (message,) = ris.messages()
        assert set(named_objects(message)) == {SR_CODE, SEG_CODE}
        assert in_pacs_when_heard == [{SR_CODE: True, SEG_CODE: True}]
        assert statuses(message) == {"P"}  # unverified: preliminary
        sr = next(i for i in store.outbox(run.id) if i.kind == "dicom" and "SR_" in i.path)
        assert pydicom.dcmread(sr.path).PreliminaryFlag == "PRELIMINARY"
    finally:
        orthanc.stop()


@pytest.mark.parametrize("notify_after", ["delivered", "written"])
def test_objects_that_never_arrive_are_never_announced(
    make_settings: Any, start_node: Any, ct_series: Any, tmp_path: Any, notify_after: str
) -> None:
    """The PACS never comes up: the objects end DEAD, and so does the ORU,
    unsent, saying why; unless the rule asked to notify once written."""
    orthanc = Orthanc(tmp_path / "orthanc")  # never started
    with running_ris("AA") as ris:
        config = sections(
            {
                "pacs": dicom_destination("ORTHANC", orthanc.dicom_port),
                "ris": hl7_destination(ris.port),
            },
            ["pacs"],
            ["ris"],
            max_attempts=2,
        )
        config["routing"]["rules"][0]["notify_after"] = notify_after
        settings = make_settings(**config)
        start_node(settings)
        series = ct_series(slices=24, size=64)
        assert storescu(series.paths, settings.node.port).returncode == 0
        store = open_store(settings)
        run = wait_settled(store, timeout=60)
        received = ris.messages()
    assert run.state == JobState.DEAD
    (notification,) = [i for i in store.outbox(run.id) if i.kind == "notification"]
    if notify_after == "delivered":
        assert received == []
        assert (notification.state, notification.attempts) == ("DEAD", 0)
        assert "not sent: the objects it names did not reach pacs" in (
            notification.last_error or ""
        )
    else:
        assert len(received) == 1
        assert (notification.state, notification.attempts) == ("DELIVERED", 1)


def test_a_rerun_is_a_correction_and_a_final_rule_says_final(
    make_settings: Any, start_node: Any, ct_series: Any, tmp_path: Any
) -> None:
    """The first result of a rule with ``result_status: final`` travels as F
    (and its SR as FINAL); the same series sent again gives a new result that
    replaces it at the RIS: C."""
    with running_ris("AA") as ris:
        config = sections(
            {
                "disk": {"type": "folder", "path": str(tmp_path / "disk")},
                "ris": hl7_destination(ris.port),
            },
            ["disk"],
            ["ris"],
        )
        config["routing"]["rules"][0]["result_status"] = "final"
        settings = make_settings(**config)
        start_node(settings)
        store = open_store(settings)
        first = ct_series(slices=24, size=64, name="first")
        assert storescu(first.paths, settings.node.port).returncode == 0
        wait_for(lambda: len(ris.messages()) == 1, 60, "the first ORU")
        again = ct_series(
            slices=24,
            size=64,
            name="again",
            study_uid=first.study_uid,
            series_uid=first.series_uid,
        )
        assert storescu(again.paths, settings.node.port).returncode == 0
        wait_for(lambda: len(ris.messages()) == 2, 60, "the second ORU")
        messages = ris.messages()
    assert statuses(messages[0]) == {"F"}
    assert statuses(messages[1]) == {"C"}
    assert "Corrects an earlier result" in fields(messages[1], "NTE")[0][3]
    runs = sorted((j for j in store.jobs() if j.kind == "run"), key=lambda j: j.id)
    assert len(runs) == 2
    sr = next(i for i in store.outbox(runs[1].id) if i.kind == "dicom" and "SR_" in i.path)
    assert pydicom.dcmread(sr.path).PreliminaryFlag == "FINAL"
