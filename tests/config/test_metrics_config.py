"""The ``metrics`` section and ``logging.format``."""

from __future__ import annotations

import pytest

from dicomnode.config import parse_config
from dicomnode.errors import ConfigError


def test_metrics_are_off_and_on_loopback_by_default() -> None:
    settings = parse_config({"metrics": {"enabled": True}})
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9112)
    assert not parse_config(None).metrics.enabled
    assert parse_config(None).logging.format == "text"
    assert parse_config({"logging": {"format": "json"}}).logging.format == "json"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"metrics": {"enabled": True, "hots": "127.0.0.1"}}, "metrics.hots"),
        ({"metrics": {"host": "localhost"}}, "metrics.host"),
        ({"metrics": {"port": 0}}, "metrics.port"),
        ({"logging": {"format": "xml"}}, "logging.format"),
    ],
)
def test_errors_name_the_field(data: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert path in str(caught.value)
