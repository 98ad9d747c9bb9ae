"""The YAML schema, `config check`, and `serve` refusing a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.config import load_config, parse_config
from dicomnode.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "dicomnode.example.yaml"


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_example_config_is_valid_and_denies_by_default() -> None:
    settings = load_config(EXAMPLE)
    assert settings.node.ae_title == "DICOMNODE"
    assert settings.ingress.allow_any is False
    assert {s.ae_title for s in settings.ingress.allowed_senders} >= {"STORESCU"}
    assert settings.database_path == settings.storage.data_dir / "dicomnode.db"


def test_empty_file_gives_defaults_and_a_warning() -> None:
    settings = parse_config(None)
    assert settings.assembly.quiet_seconds == 30
    assert settings.node.port == 11112
    assert any("every association will be rejected" in w for w in settings.warnings())


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"ingress": {"allowed_sender": []}}, "ingress.allowed_sender", "Extra inputs"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title", "at most 16"),
        ({"node": {"ae_title": "BAD\\AE"}}, "node.ae_title", "backslash"),
        ({"node": {"port": 70000}}, "node.port", "less than or equal"),
        ({"node": {"bind": "localhost"}}, "node.bind", "not an IPv4"),
        ({"ingress": {"allowed_senders": [{"host": "127.0.0.1"}]}}, "ae_title", "Field required"),
        (
            {"assembly": {"quiet_seconds": 60, "max_wait_seconds": 10}},
            "assembly",
            "max_wait_seconds",
        ),
        ({"database": {"url": "postgresql://x"}}, "database", "must name the database"),
        ({"database": {"url": "mysql://h/db"}}, "database", "'mysql'"),
        ({"logging": {"level": "LOUD"}}, "logging.level", "DEBUG"),
    ],
)
def test_errors_name_the_field(data: object, path: str, words: str) -> None:
    found = problems(data)
    assert any(p.startswith(path) or f".{path}" in p.split(":")[0] for p in found), found
    assert any(words in p for p in found), found


def test_every_error_is_reported_at_once() -> None:
    found = problems({"node": {"port": 0, "ae_title": ""}, "storage": {"min_free_mb": -1}})
    paths = sorted(p.split(":")[0] for p in found)
    assert paths == ["node.ae_title", "node.port", "storage.min_free_mb"]


def test_a_key_with_a_newline_stays_on_its_problem_s_line() -> None:
    """Found by fuzzing (tests/fuzz): a key is the file's own text, and a
    newline in it split the problem naming it over two lines."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"node": {"port\nstorage": 1}})
    assert caught.value.problems == ["node.port\\nstorage: Extra inputs are not permitted (got 1)"]
    # pydantic quotes a destination's type in its message
    with pytest.raises(ConfigError) as caught:
        parse_config({"destinations": {"pacs": {"type": "\n"}}})
    (problem,) = caught.value.problems
    assert problem.startswith("destinations.pacs: Input tag '\\n' found using 'type'"), problem


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({False: {}}, "(top level): the key False is not text"),
        ({"node": {1: 2}}, "node: the key 1 is not text"),
        ({"destinations": {True: {"type": "folder", "path": "x"}}}, "destinations: the key True"),
    ],
)
def test_a_key_yaml_read_as_no_text_is_named_as_written(data: object, problem: str) -> None:
    """Found by fuzzing (tests/fuzz): an unquoted ``no:`` is the key False, and
    the problem named it ``0``, a path that is nowhere in the file."""
    (found,) = problems(data)
    assert found.startswith(problem), found
    assert "quote the key" in found


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("storage:\n  data_dir: 2024-13-01\n", "month must be in 1..12"),
        ('node: "\\U00110000"\n', "chr() arg not in range"),
        ("node: " + "[" * 3000 + "]" * 3000 + "\n", "RecursionError"),
        ("node:\n  port: " + "9" * 5000 + "\n", "Exceeds the limit"),
    ],
    ids=["no-date", "escape-past-unicode", "too-deep", "too-many-digits"],
)
def test_yaml_that_pyyaml_fails_on_in_python_is_not_valid_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    """Found by fuzzing (tests/fuzz): PyYAML lets a ValueError or a
    RecursionError through for these, and `dicomnode config check` printed a
    traceback."""
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_config(path)
    assert reason in caught.value.problems[0]
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "Traceback" not in err


def test_top_level_must_be_a_mapping() -> None:
    assert problems(["node"])[0].startswith("(top level)")


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("node: {ae_title: NODE1}\ningress: {allow_any: true}\n")
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "allow_any" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  port: -1\n  colour: red\nassembly: {quiet_seconds: 0}\n")
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "node.port:" in err
    assert "node.colour:" in err
    assert "assembly.quiet_seconds:" in err

    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err

    notyaml = tmp_path / "broken.yaml"
    notyaml.write_text("node: [unclosed\n")
    assert main(["config", "check", str(notyaml)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {port: 104}\nstorage: {data_dir: " + str(tmp_path / "d") + "}\nx: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "dicomnode", "serve", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "x: Extra inputs are not permitted" in result.stderr
    assert not (tmp_path / "d").exists()


def test_the_example_ties_every_tool_ae_title_to_this_machine():
    """The DCMTK tools' default AE titles are everyone's: from another host they
    prove nothing, so the example accepts them only from 127.0.0.1."""
    senders = load_config(EXAMPLE).ingress.allowed_senders
    tools = {"STORESCU", "ECHOSCU", "DCMSEND", "DICOMNODE_SCU"}
    assert tools <= {s.ae_title for s in senders}
    assert all(s.host == "127.0.0.1" for s in senders if s.ae_title in tools)
