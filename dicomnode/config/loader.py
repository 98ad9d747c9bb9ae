"""Reading the YAML file into :class:`~dicomnode.config.schema.Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dicomnode.config.schema import Settings
from dicomnode.errors import ConfigError
from dicomnode.logs import escape


def _field_path(loc: tuple[int | str, ...]) -> str:
    # keys are the file's own text: a newline in one must not split the problem
    return ".".join(escape(part) for part in loc) or "(top level)"


def _describe(error: Any) -> str:
    loc = tuple(error.get("loc", ()))
    value = error.get("input")
    if error.get("type") == "invalid_key" or (
        loc[-1:] == ("[key]",) and not isinstance(value, str)
    ):
        # pydantic's path ends in the key, which YAML read as a boolean or a
        # number (False shows as 0): name the mapping it is in, and the key
        parent = loc[:-2] if loc[-1:] == ("[key]",) else loc[:-1]
        return (
            f"{_field_path(parent)}: the key {escape(repr(value))} is not text; YAML reads an "
            "unquoted yes, no, true, false or number as such, so quote the key"
        )
    path = _field_path(loc)
    # pydantic puts some inputs into its message (a discriminator's value)
    message = escape(error.get("msg", "invalid"), 1000)
    if error.get("type") != "missing" and isinstance(value, str | int | float | bool):
        return f"{path}: {message} (got {value!r})"
    return f"{path}: {message}"


def parse_config(data: Any, source: str = "<config>") -> Settings:
    """Validate already-parsed YAML data.

    Parameters
    ----------
    data : Any
        What :func:`yaml.safe_load` returned; ``None`` means an empty file.
    source : str
        Name used in error messages.

    Returns
    -------
    Settings
        The validated configuration.

    Raises
    ------
    ConfigError
        With one problem per invalid field, each naming its field path.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: invalid configuration",
            [f"(top level): expected a mapping of sections, got {type(data).__name__}"],
        )
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration", problems) from exc
    problems = settings.reference_problems()
    if problems:
        raise ConfigError(f"{source}: invalid configuration", problems)
    return settings


def load_config(path: str | Path) -> Settings:
    """Read and validate a YAML configuration file.

    Parameters
    ----------
    path : str or Path
        The YAML file.

    Returns
    -------
    Settings
        The validated configuration.

    Raises
    ------
    ConfigError
        The file is missing, is not YAML, or does not validate.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read configuration ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML", [str(exc)]) from exc
    except (ValueError, RecursionError) as exc:
        # PyYAML builds some values with Python and lets its errors through:
        # a date that is no date (2024-13-01), an escape past U+10FFFF, an
        # integer of more than 4,300 digits; and nesting too deep to compose
        raise ConfigError(
            f"{file}: not valid YAML", [escape(f"{type(exc).__name__}: {exc}", 200)]
        ) from exc
    return parse_config(data, str(file))
