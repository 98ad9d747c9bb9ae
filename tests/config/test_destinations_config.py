"""Destinations in the YAML and the rules that name them."""

from __future__ import annotations

import pytest

from dicomnode.config import parse_config
from dicomnode.errors import ConfigError

DESTINATIONS = {
    "pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
    "ris": {"type": "hl7", "host": "127.0.0.1", "port": 2575, "receiving_application": "RIS"},
    "disk": {"type": "folder", "path": "results"},
}


def rule(**fields: object) -> dict[str, object]:
    return {"name": "r", "pipeline": "ct-lung", **fields}


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_destinations_by_type() -> None:
    settings = parse_config(
        {
            "destinations": DESTINATIONS,
            "routing": {"rules": [rule(destinations=["pacs", "disk"], notify=["ris"])]},
        }
    )
    assert settings.destinations["pacs"].type == "dicom"
    assert settings.destinations["ris"].type == "hl7"
    assert settings.export.max_attempts == 10


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"destinations": {"x": {"type": "ftp", "host": "h"}}},
            "destinations.x: Input tag 'ftp' found using 'type' does not match",
        ),
        (
            {"destinations": {"x": {"type": "dicom", "host": "h", "port": 104}}},
            "destinations.x.dicom.ae_title: Field required",
        ),
        (
            {"destinations": DESTINATIONS, "routing": {"rules": [rule(destinations=["nas"])]}},
            "routing.rules.0.destinations.0: no destination 'nas'",
        ),
        (
            {"destinations": DESTINATIONS, "routing": {"rules": [rule(destinations=["ris"])]}},
            "routing.rules.0.destinations.0: 'ris' is an hl7 destination",
        ),
        (
            {"destinations": DESTINATIONS, "routing": {"rules": [rule(notify=["pacs"])]}},
            "routing.rules.0.notify.0: 'pacs' is a dicom destination",
        ),
        (
            {"export": {"backoff_seconds": 100, "max_backoff_seconds": 10}},
            "export: Value error, max_backoff_seconds",
        ),
    ],
)
def test_errors_name_the_field(data: dict[str, object], expected: str) -> None:
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found
