"""The console in headless Chromium, against a real node, DCMTK and Orthanc.

An admin logs in; a CT pushed with storescu reaches DONE on its study page,
with the preview of the ct-lung SEG over the CT; with Orthanc stopped the next
study's delivery fails and goes DEAD; Orthanc is started again, the admin
replays, and the SEG and SR reach Orthanc. No line of the node's log names
the canary patient. Screenshots are kept under the test's tmp_path (and under
test-artifacts/console/).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomnode.synthetic import write_ct_series
from tests.helpers import NodeProcess, storescu, write_config
from tests.orthanc import Orthanc
from tests.viewer import ARTIFACTS, launch_chromium
from tests.web.console import ADMIN, add_user, console_config

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CANARY_NAME = "CANARYCONSOLE^ZELDA"
CANARY_ID = "CANARY-CONSOLE-31337"


def reload_until(page: Any, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Reload the page (it has no script that refreshes it) until ``condition``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)
        page.reload()


class Shots:
    """Screenshots: in tmp_path, copied to test-artifacts/console/."""

    def __init__(self, page: Any, tmp_path: Path) -> None:
        self.page = page
        self.folder = tmp_path / "screenshots"
        self.folder.mkdir()
        self.taken: list[Path] = []

    def __call__(self, name: str) -> Path:
        path = self.folder / f"{len(self.taken):02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path

    def keep(self) -> None:
        target = ARTIFACTS / "console"
        target.mkdir(parents=True, exist_ok=True)
        for path in self.taken:
            shutil.copy2(path, target / path.name)


def test_an_admin_watches_a_study_through_the_console(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    config, port = console_config(
        tmp_path,
        runner={"enabled": True, "device": "cpu", "poll_seconds": 0.2, "workers": 1},
        routing={
            "rules": [
                {
                    "name": "ct-chest",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": "ct-lung",
                    "destinations": ["pacs"],
                }
            ]
        },
        destinations={
            "pacs": {
                "type": "dicom",
                "ae_title": Orthanc.AET,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            }
        },
        export={"max_attempts": 2, "backoff_seconds": 0.5, "max_backoff_seconds": 1},
        monitoring={"enabled": False},
    )
    add_user(write_config(tmp_path / "users.yaml", config), *ADMIN, "admin")
    node = node_process(config)
    base = f"http://127.0.0.1:{port}"
    try:
        with launch_chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            shots = Shots(page, tmp_path)
            try:
                run_console(page, shots, base, node, orthanc, tmp_path)
            finally:
                shots.keep()
    finally:
        orthanc.stop()
    log = node.log()
    assert "association from SCANNER" in log  # the log is the node's, and it ran
    for canary in (CANARY_NAME, CANARY_ID, "CANARYCONSOLE", "ZELDA"):
        assert canary not in log, f"{canary} in the node's log"


def run_console(
    page: Any, shots: Shots, base: str, node: NodeProcess, orthanc: Orthanc, tmp_path: Path
) -> None:
    # without a session: the login page
    page.goto(f"{base}/studies")
    assert page.url.startswith(f"{base}/login")
    page.fill("input[name=name]", ADMIN[0])
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.inner_text("p.error")
    page.fill("input[name=name]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    shots("login")
    page.click("button[type=submit]")
    assert page.url == f"{base}/studies"

    # a CT, pushed by DCMTK: DONE on its page, with the preview
    first = write_ct_series(
        tmp_path / "ct1",
        slices=20,
        rows=64,
        columns=64,
        patient_name=CANARY_NAME,
        patient_id=CANARY_ID,
    )
    assert storescu(first.paths, node.port).returncode == 0
    page.goto(f"{base}/studies/{first.study_uid}")
    reload_until(
        page,
        lambda: page.locator(".run-state").count() > 0 and page.inner_text(".run-state") == "DONE",
        240,
        "the ct-lung run to be DONE on the study page",
    )
    assert page.locator("b.rule").inner_text() == "ct-chest"
    page.click("details.explain summary")
    assert "ct-chest" in page.inner_text("#explain") and "Modality" in page.inner_text("#explain")
    timeline = page.inner_text("section.run table.timeline")
    for state in ("ROUTED", "RUNNING", "RESULTS_WRITTEN", "EXPORTING", "DONE"):
        assert state in timeline
    states = page.locator(".delivery-state").all_inner_texts()
    assert states and set(states) == {"DELIVERED"}
    preview = page.locator("figure.preview img")
    preview.wait_for()
    width = page.evaluate("img => img.complete ? img.naturalWidth : 0", preview.element_handle())
    assert width > 0, "the preview image did not load"
    # the patient ID is shown to the logged-in admin (from the audit trail), never logged
    assert CANARY_ID in page.inner_text("main")
    shots("study-done")
    page.goto(f"{base}/studies?patient_id={CANARY_ID}")
    assert page.locator("table.studies a").all_inner_texts() == [
        first.study_uid[:10] + "…" + first.study_uid[-10:]
    ]

    # the PACS is down: the next study's delivery fails, then goes DEAD
    orthanc.stop()
    second = write_ct_series(tmp_path / "ct2", slices=20, rows=64, columns=64)
    assert storescu(second.paths, node.port).returncode == 0
    page.goto(f"{base}/studies/{second.study_uid}")
    reload_until(
        page,
        lambda: page.locator(".run-state").count() > 0 and page.inner_text(".run-state") == "DEAD",
        240,
        "the delivery to the stopped PACS to go DEAD",
    )
    assert "DEAD" in page.locator(".delivery-state").all_inner_texts()
    shots("delivery-dead")
    page.goto(f"{base}/destinations")
    page.click("form[action='/destinations/pacs/test'] button")
    assert "pacs" in page.inner_text("p.message") and "NOT reachable" in page.inner_text(
        "p.message"
    )
    page.goto(f"{base}/deliveries")
    assert second.study_uid[:10] in page.inner_text("main")
    shots("deliveries")

    # the PACS is back: the test says so; replay, and it is delivered
    orthanc.start()
    page.goto(f"{base}/destinations")
    page.click("form[action='/destinations/pacs/test'] button")
    assert ": reachable" in page.inner_text("p.message")
    shots("destinations")
    page.goto(f"{base}/studies/{second.study_uid}")
    replayed = page.get_attribute("form[action$='/replay']", "action").split("/")[2]
    page.click("form[action$='/replay'] button")
    assert "replay: its results are queued" in page.inner_text("p.message")
    reload_until(
        page,
        lambda: (
            page.inner_text(".run-state") == "DONE"
            and set(page.locator(".delivery-state").all_inner_texts()) == {"DELIVERED"}
        ),
        120,
        "the replayed delivery to reach the PACS",
    )
    shots("replayed")
    in_pacs = {
        orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"]: s
        for s in orthanc.get("/studies")
    }
    assert set(in_pacs) == {first.study_uid, second.study_uid}
    modalities = {
        orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"]
        for s in orthanc.get(f"/studies/{in_pacs[second.study_uid]}")["Series"]
    }
    assert modalities == {"SEG", "SR"}

    edit_rules(page, shots, base, node, tmp_path, replayed)

    page.goto(f"{base}/pipelines")
    row = page.locator("tr", has_text="ct-lung").inner_text()
    assert "ct-chest" in row and "cpu" in row and "yes" in row.split("\t")
    shots("pipelines")
    page.goto(base + "/")
    assert page.inner_text("#studies") == "3"
    shots("dashboard")


def edit_rules(
    page: Any, shots: Shots, base: str, node: NodeProcess, tmp_path: Path, replayed: str
) -> None:
    """Edit the rules with an error, see the field named; fix, dry-run, save, reload;
    the next study follows the new rule; the audit trail holds exactly the admin's steps."""
    page.goto(f"{base}/rules")
    original = page.input_value("textarea[name=text]")
    assert "name: ct-chest" in original
    broken = original.replace(
        "    pipeline: ct-lung\n", "    pipeline: ct-lung\n    priority: high\n"
    )
    assert broken != original
    page.fill("textarea[name=text]", broken)
    page.click("button[value=check]")
    problems = page.inner_text("#problems")
    assert "routing.rules.0.priority" in problems, problems
    shots("rules-error")
    # the error is not saved either
    page.click("button[value=save]")
    assert "routing.rules.0.priority" in page.inner_text("#problems")
    assert "priority: high" not in node.config_path.read_text()

    fixed = original.replace("name: ct-chest\n", "name: ct-chest-v2\n")
    page.fill("textarea[name=text]", fixed)
    page.click("button[value=dry-run]")
    rows = page.locator("#dry-run tr.changed").all_inner_texts()
    assert len(rows) == 2 and all("ct-chest-v2" in row for row in rows), rows
    shots("rules-dry-run")
    page.click("button[value=save]")
    message = page.inner_text("p.message")
    assert "saved" in message and "reload to apply" in message
    assert "name: ct-chest-v2" in node.config_path.read_text()
    backups = list(node.config_path.parent.glob(node.config_path.name + ".*.bak"))
    assert len(backups) == 1 and "name: ct-chest\n" in backups[0].read_text()
    page.click("button[value=reload]")
    assert page.inner_text("p.message").startswith("reloaded"), page.inner_text("p.message")
    shots("rules-reloaded")

    # a study received now follows the new rule
    third = write_ct_series(tmp_path / "ct3", slices=20, rows=64, columns=64)
    assert storescu(third.paths, node.port).returncode == 0
    page.goto(f"{base}/studies/{third.study_uid}")
    reload_until(
        page,
        lambda: page.locator(".run-state").count() > 0 and page.inner_text(".run-state") == "DONE",
        240,
        "the third study's run to be DONE",
    )
    assert page.locator("b.rule").first.inner_text() == "ct-chest-v2"
    # every step left exactly its audit rows, refusals included
    trail = page.request.get(f"{base}/api/v1/audit", params={"actor": ADMIN[0]}).json()
    assert [(r["event"], r["action"], r["target"], r["outcome"]) for r in reversed(trail)] == [
        ("login", "login", "console", "failure"),
        ("login", "login", "console", "success"),
        ("admin-action", "test-destination", "pacs", "failure"),
        ("admin-action", "test-destination", "pacs", "success"),
        ("admin-action", "replay", f"job {replayed}", "success"),
        ("admin-action", "save-config", str(node.config_path), "refused"),
        ("admin-action", "save-config", str(node.config_path), "success"),
        ("config-reload", "reload", str(node.config_path), "success"),
    ]
    page.goto(f"{base}/audit?actor={ADMIN[0]}")
    shots("audit")
