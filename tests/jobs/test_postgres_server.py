"""The PostgreSQL the job store tests run on: a fresh database per test, reachable
at its ``database.url``, and a restart (or a crash) of the server keeps every
committed row."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer

pytestmark = [pytest.mark.peers, pytest.mark.postgres]


def rows(server: PostgresServer, dbname: str, sql: str) -> list[tuple[str, ...]]:
    """``sql``'s rows as text: through psycopg where it is installed, else psql."""
    if importlib.util.find_spec("psycopg") is not None:
        import psycopg

        with psycopg.connect(server.conninfo(dbname), connect_timeout=10) as conn:
            return [tuple(str(v) for v in row) for row in conn.execute(sql).fetchall()]
    return [tuple(line.split("|")) for line in server.psql(dbname, sql).splitlines()]


def test_each_test_gets_an_empty_database_at_its_url(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    prefix = f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/"
    assert postgres_url.startswith(prefix)
    dbname = postgres_url.removeprefix(prefix)
    assert rows(
        postgres_server, dbname, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ) == [("0",)]
    assert rows(postgres_server, dbname, "SHOW fsync") == [("on",)]
    assert rows(postgres_server, dbname, "SELECT inet_server_addr()::text") == [("127.0.0.1/32",)]


def test_a_restart_and_a_crash_keep_committed_rows() -> None:
    server = PostgresServer().start()
    try:
        server.create_database("kept")
        server.psql("kept", "CREATE TABLE t (x integer); INSERT INTO t VALUES (42)")
        server.stop()
        assert not server.running
        server.start()
        assert rows(server, "kept", "SELECT x FROM t") == [("42",)]
        server.psql("kept", "INSERT INTO t VALUES (43)")
        server.crash()
        server.start()
        assert rows(server, "kept", "SELECT x FROM t ORDER BY x") == [("42",), ("43",)]
        assert "database system was not properly shut down" in server.log()
    finally:
        server.remove()
    assert not Path(server.root).exists()
