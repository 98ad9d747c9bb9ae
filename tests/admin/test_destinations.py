"""Testing destinations: an MLLP RIS that listens, ports nobody listens on, a
folder that cannot be written; every test is an audited admin action."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.admin import Admin
from dicomnode.config import parse_config
from dicomnode.errors import NotFoundError
from dicomnode.jobs import AuditEvent, SQLiteJobStore
from tests.export.mllp_ris import running_ris
from tests.helpers import free_port, node_config

pytestmark = pytest.mark.peers


def test_destination_tests_say_what_they_found(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    with running_ris() as ris:
        settings = parse_config(
            node_config(
                tmp_path,
                destinations={
                    "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
                    "ris-down": {"type": "hl7", "host": "127.0.0.1", "port": free_port()},
                    "pacs-down": {
                        "type": "dicom",
                        "ae_title": "PACS",
                        "host": "127.0.0.1",
                        "port": free_port(),
                        "timeout_seconds": 5,
                    },
                    "folder": {"type": "folder", "path": str(tmp_path / "out" / "new")},
                    "blocked": {"type": "folder", "path": str(blocked)},
                },
            )
        )
        store = SQLiteJobStore(settings.database_url)
        admin = Admin(settings, store)
        results = {
            name: admin.test_destination(name, "alice")
            for name in ("ris", "ris-down", "pacs-down", "folder", "blocked")
        }
        assert ris.messages() == []  # a test sends nothing
    assert results["ris"].ok and "accepted a connection" in results["ris"].detail
    for name in ("ris-down", "pacs-down"):
        assert not results[name].ok
        assert results[name].detail.startswith("cannot connect to 127.0.0.1:")
        assert "Connection refused" in results[name].detail
    assert results["folder"].ok and "created at the first delivery" in results["folder"].detail
    assert not results["blocked"].ok and "is not a folder" in results["blocked"].detail
    listed = {row.name: (row.type, row.target, row.used_by) for row in admin.destinations()}
    assert listed["pacs-down"][:2] == ("dicom", results["pacs-down"].target)
    assert listed["blocked"] == ("folder", str(blocked), [])
    with pytest.raises(NotFoundError, match="no destination 'nowhere'"):
        admin.test_destination("nowhere", "alice")

    rows = store.audit_records(event=str(AuditEvent.ADMIN_ACTION), oldest_first=True)
    assert [(r.entry.actor, r.entry.target, r.entry.outcome) for r in rows] == [
        ("alice", "ris", "success"),
        ("alice", "ris-down", "failure"),
        ("alice", "pacs-down", "failure"),
        ("alice", "folder", "success"),
        ("alice", "blocked", "failure"),
    ]
    assert [r.id for r in rows] == [results[n].audit_id for n in results]


def test_logins_and_failed_logins_are_audited(tmp_path: Path) -> None:
    settings = parse_config(node_config(tmp_path))
    store = SQLiteJobStore(settings.database_url)
    admin = Admin(settings, store)
    admin.record_login("bob", False, "127.0.0.1", "wrong password")
    admin.record_login("bob", True, "127.0.0.1")
    rows = store.audit_records(event=str(AuditEvent.LOGIN), oldest_first=True)
    assert [(r.entry.actor, r.entry.outcome, r.entry.detail) for r in rows] == [
        ("bob", "failure", {"reason": "wrong password"}),
        ("bob", "success", {}),
    ]
    (failed,) = [a for a in admin.audit() if a.outcome == "failure"]
    assert (failed.event, failed.address) == ("login", "127.0.0.1")
