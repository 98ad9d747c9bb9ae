"""Fixtures: configs, an in-process node, a node process, synthetic series."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from dicomnode.config import Settings, parse_config
from dicomnode.jobs import SQLiteJobStore
from dicomnode.service import Node
from dicomnode.synthetic import Series, write_ct_series
from tests import helpers
from tests.helpers import NodeProcess, node_config, wait_for, write_config
from tests.postgres_server import PostgresServer

# Property-based tests (tests/fuzz). "ci", the default: derandomized (the same
# examples on every run), no per-example deadline (a loaded 2-core machine is
# slow; the tests bound their own time where a hang is the fault), no example
# database. "fuzz" (make fuzz): fresh random examples on every round.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    derandomize=False,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(**sections: dict[str, Any]) -> Settings:
        return parse_config(node_config(tmp_path, **sections))

    return build


@pytest.fixture
def start_node() -> Iterator[Callable[[Settings], Node]]:
    """Start an in-process node; stopped at teardown."""
    started: list[Node] = []

    def start(settings: Settings) -> Node:
        node = Node(settings)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start ``dicomnode serve`` processes; stopped at teardown."""
    started: list[NodeProcess] = []

    def start(config: dict[str, Any], wait: bool = True, **kwargs: Any) -> NodeProcess:
        path = write_config(tmp_path / f"node{len(started)}.yaml", config)
        proc = NodeProcess(path, config["node"]["port"], tmp_path / "node.log")
        started.append(proc)
        return proc.start(wait=wait, **kwargs)

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, in a temporary directory on a free
    port of 127.0.0.1 (never the system's cluster); removed at the end. Tests
    that stop or crash a server start one of their own."""
    server = PostgresServer().start()
    yield server
    server.remove()


_databases = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def suite_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``DICOMNODE_TEST_DATABASE=postgresql`` (``make test-postgres``) every
    node a test configures keeps its jobs on a new PostgreSQL database; by
    default on a SQLite file in its data directory."""
    engine = os.environ.get("DICOMNODE_TEST_DATABASE", "sqlite")
    if engine == "sqlite":
        yield
        return
    assert engine == "postgresql", f"DICOMNODE_TEST_DATABASE: sqlite or postgresql, not {engine}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    made: dict[Path, str] = {}

    def database_for(folder: Path) -> str:
        if folder not in made:
            made[folder] = server.create_database(f"node_{next(_databases)}")
        return made[folder]

    helpers.database_for = database_for
    yield
    helpers.database_for = None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A ``database.url`` (``postgresql+psycopg://``) of a new, empty database
    on the session's server, one per test."""
    return postgres_server.create_database(f"test_{next(_databases)}")


@pytest.fixture
def ct_series(tmp_path: Path) -> Callable[..., Series]:
    def build(slices: int = 64, size: int = 64, name: str = "ct", **kwargs: Any) -> Series:
        return write_ct_series(tmp_path / name, slices=slices, rows=size, columns=size, **kwargs)

    return build


def open_store(settings: Settings) -> SQLiteJobStore:
    return SQLiteJobStore(settings.database_url)


def wait_for_state(store: SQLiteJobStore, study_uid: str, state: str, timeout: float) -> Any:
    """Wait until a job of the study has reached ``state`` (it may have moved on);
    return those jobs, as they are now."""

    def check() -> Any:
        jobs = [
            j
            for j in store.jobs(study_instance_uid=study_uid)
            if state in [t.to_state for t in store.history(j.id)]
        ]
        return jobs or None

    return wait_for(check, timeout, f"a job of the study to reach {state}")
