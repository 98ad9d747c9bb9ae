"""The configuration loader, fuzzed.

Documents are built from the schema's own keys (every section, rule, matcher
and destination) with values of the right type, at and past their bounds, and
of any other type, and with keys the schema does not have. Loading one either
gives :class:`Settings` or raises :class:`ConfigError` whose every problem
starts with the path of the field it is about; ``dicomnode config check``
exits 0 or 1 and prints no traceback. The YAML text itself is also cut and
spliced: the result loads, or is refused as not YAML, or as invalid.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.cli import main
from dicomnode.config import Settings, load_config
from dicomnode.errors import ConfigError
from dicomnode.logs import escape
from tests.fuzz import note, rounds
from tests.fuzz.config_documents import SETTINGS_DOCUMENTS

_FOLDER = Path(tempfile.mkdtemp(prefix="dicomnode-fuzz-config-"))


def _write(text: str) -> Path:
    path = _FOLDER / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _names_its_field(problem: str, document: Any) -> bool:
    """Whether a problem line starts with a field path of ``document``: one of
    its top-level keys (control characters escaped), then ``.`` or ``:``; or
    ``(top level)``."""
    if problem.startswith("(top level): "):
        return True
    keys = [escape(key) for key in document] if isinstance(document, dict) else []
    return any(problem.startswith(f"{key}.") or problem.startswith(f"{key}: ") for key in keys)


def _load(path: Path, document: Any) -> None:
    """The property of the loader, on one file."""
    try:
        found = load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        if "not valid YAML" in str(exc):
            note("config", "refused: not YAML")
            return
        assert exc.problems, str(exc)
        for problem in exc.problems:
            assert _names_its_field(problem, document), problem
            assert "\n" not in problem and "\r" not in problem, f"not one line: {problem!r}"
            section = problem.split(":", 1)[0].split(".", 1)[0]
            known = section in Settings.model_fields or section == "(top level)"
            note("config", f"refused at {section if known else 'an unknown key'}")
        return
    assert isinstance(found, Settings)
    found.warnings()
    note("config", "loaded")


def _check_command(path: Path) -> None:
    """``dicomnode config check`` on the same file: 0 or 1, no traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["config", "check", str(path)])
    assert status in (0, 1), (status, err.getvalue())
    assert "Traceback" not in out.getvalue() + err.getvalue()
    if status == 1:
        assert err.getvalue().startswith(f"error: {path}: "), err.getvalue()


@settings(max_examples=150)
@given(SETTINGS_DOCUMENTS)
def _documents(document: dict[Any, Any]) -> None:
    path = _write(yaml.safe_dump(document, allow_unicode=True))
    _load(path, yaml.safe_load(path.read_text(encoding="utf-8")))
    _check_command(path)


def test_a_document_from_the_schema_loads_or_names_its_fields() -> None:
    rounds("config", _documents)


@settings(max_examples=60)
@given(SETTINGS_DOCUMENTS, st.data())
def _texts(document: dict[Any, Any], data: st.DataObject) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    at = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 40))
    insert = data.draw(
        st.sampled_from(
            ["", ":", "- ", "{", "[", "'", '"', "\t", "&a ", "*a", "<<: *a\n", "!!binary x"]
        )
        | st.text(max_size=4)
    )
    path = _write(text[:at] + insert + text[at + cut :])
    try:
        parsed = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError, RecursionError):
        parsed = None  # the loader must say "not valid YAML"
    _load(path, parsed)
    _check_command(path)


def test_a_spliced_yaml_text_loads_or_is_refused() -> None:
    rounds("config", _texts)
