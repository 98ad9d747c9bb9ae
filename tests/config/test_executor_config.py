"""``runner.executor`` and ``runner.celery``: local by default, errors name the field."""

from __future__ import annotations

import pytest

from dicomnode.config import parse_config
from dicomnode.errors import ConfigError


def test_the_local_executor_is_the_default_and_needs_no_broker() -> None:
    runner = parse_config({}).runner
    assert (runner.executor, runner.celery) == ("local", None)


def test_celery_takes_a_redis_broker_and_lease_settings() -> None:
    runner = parse_config(
        {
            "runner": {
                "executor": "celery",
                "celery": {"broker": "redis://10.0.0.2:6379/0", "lease_seconds": 30},
            }
        }
    ).runner
    assert runner.celery is not None
    assert (runner.celery.broker, runner.celery.lease_seconds) == ("redis://10.0.0.2:6379/0", 30)


@pytest.mark.parametrize(
    ("runner", "field"),
    [
        ({"executor": "celery"}, "runner.celery: Value error, required with executor celery"),
        ({"executor": "remote"}, "runner.executor: Input should be 'local' or 'celery'"),
        (
            {"executor": "celery", "celery": {"broker": "amqp://rabbit//"}},
            "runner.celery.broker: String should match pattern",
        ),
        (
            {"executor": "celery", "celery": {"broker": "redis://r/0", "lease": 5}},
            "runner.celery.lease: Extra inputs are not permitted",
        ),
        (
            {"executor": "celery", "celery": {"broker": "redis://r/0", "lease_seconds": 0}},
            "runner.celery.lease_seconds: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_executor_setting_is_refused_naming_its_field(
    runner: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"runner": runner})
    assert field in str(caught.value)
