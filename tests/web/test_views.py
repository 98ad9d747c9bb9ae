"""The console's own text handling: the routing section cut from and put back
into a configuration file, and secrets hidden from the configuration page."""

from __future__ import annotations

from pathlib import Path

import yaml

from dicomnode.config import load_config
from dicomnode.web.views import redacted, routing_section, with_routing_section

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "dicomnode.example.yaml"


def test_the_routing_section_is_replaced_and_the_rest_of_the_file_kept() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    section = routing_section(text)
    assert section.startswith("routing:\n") and "name: ct-chest-lungs" in section
    # comments inside the section come with it; the next section's do not
    assert "# Rules are tried in order" in section
    assert "destinations:\n  results:" not in section
    assert with_routing_section(text, section) == text
    edited = section.replace("name: ct-chest-lungs", "name: ct-chest-v2")
    rewritten = with_routing_section(text, edited)
    assert rewritten.replace("ct-chest-v2", "ct-chest-lungs") == text
    assert yaml.safe_load(rewritten)["routing"]["rules"][0]["name"] == "ct-chest-v2"
    # everything else of the file, comments included, is as it was
    before, after = text.splitlines(), rewritten.splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert [(old.strip(), new.strip()) for old, new in changed] == [
        ("- name: ct-chest-lungs", "- name: ct-chest-v2")
    ]


def test_a_file_without_routing_gets_the_section_at_its_end() -> None:
    text = "node:\n  port: 11112\n"
    assert routing_section(text) == "routing:\n  rules: []\n"
    assert with_routing_section(text, "routing:\n  rules: []") == text + "routing:\n  rules: []\n"


def test_urls_lose_their_credentials_and_queries_and_nothing_else_changes() -> None:
    loaded = load_config(EXAMPLE).model_dump(mode="json")
    assert redacted(loaded) == loaded  # the example holds no secret
    assert redacted(
        {
            "broker": "redis://:s3cret@10.0.0.5:6379/0",
            "hook": ["https://alerts.example.org/x?token=abc"],
            "path": "var/delivered",
            "n": 3,
        }
    ) == {
        "broker": "redis://***@10.0.0.5:6379/0",
        "hook": ["https://alerts.example.org/x?***"],
        "path": "var/delivered",
        "n": 3,
    }
