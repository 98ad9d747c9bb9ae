"""Configuration through the admin layer: validate, save (with a backup) and
promote a shadow candidate; each change audited with the file before and after."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dicomnode.admin import Admin
from dicomnode.config import load_config
from dicomnode.errors import ConfigError
from dicomnode.jobs import AuditEvent, SQLiteJobStore
from tests.helpers import node_config, write_config


def _admin(tmp_path: Path, **sections: dict[str, object]) -> tuple[Admin, Path]:
    path = write_config(tmp_path / "node.yaml", node_config(tmp_path, **sections))
    settings = load_config(path)
    return Admin(settings, SQLiteJobStore(settings.database_url), config_path=path), path


def test_save_refuses_an_invalid_file_and_keeps_a_backup_of_a_valid_one(tmp_path: Path) -> None:
    admin, path = _admin(tmp_path)
    original = path.read_text()
    document = yaml.safe_load(original)
    document["routing"] = {"rules": [{"name": "x", "pipeline": "ct-lung", "priority": "high"}]}
    checked = admin.validate_config(yaml.safe_dump(document))
    assert not checked.ok and checked.problems[0].startswith("routing.rules.0.priority:")
    with pytest.raises(ConfigError, match=r"routing\.rules\.0\.priority"):
        admin.save_config(yaml.safe_dump(document), "alice")
    assert path.read_text() == original  # nothing half-written
    assert list(tmp_path.glob("node.yaml.*.bak")) == []

    document["routing"]["rules"][0]["priority"] = 3
    saved = admin.save_config(yaml.safe_dump(document), "alice")
    assert saved.backup_path is not None and Path(saved.backup_path).read_text() == original
    assert load_config(path).routing.rules[0].priority == 3

    rows = admin.store.audit_records(event=str(AuditEvent.ADMIN_ACTION), oldest_first=True)
    assert [(r.entry.action, r.entry.outcome) for r in rows] == [
        ("save-config", "refused"),
        ("save-config", "success"),
    ]
    assert rows[1].entry.detail["before"] == original
    assert "priority: 3" in str(rows[1].entry.detail["after"])


def test_promote_is_audited_and_a_second_one_refused(tmp_path: Path) -> None:
    rule = {"name": "lungs", "pipeline": "ct-lung", "shadow": {"pipeline": "cxr-classify"}}
    admin, _ = _admin(tmp_path, routing={"rules": [rule]})
    promoted = admin.promote("lungs", "alice")
    assert (promoted["from_pipeline"], promoted["to_pipeline"]) == ("ct-lung", "cxr-classify")
    with pytest.raises(ConfigError):
        admin.promote("lungs", "alice")
    rows = admin.store.audit_records(event=str(AuditEvent.ADMIN_ACTION), oldest_first=True)
    assert [(r.entry.action, r.entry.target, r.entry.outcome) for r in rows] == [
        ("promote", "lungs", "success"),
        ("promote", "lungs", "refused"),
    ]
    assert "cxr-classify" in str(rows[0].entry.detail["after"])
    (promotion,) = admin.store.promotions()
    assert promotion["by_user"] == "alice"
