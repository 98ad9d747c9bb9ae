"""PostgreSQL restarted while a scanner pushes: no instance is answered Success
without its row in the job store; an instance that arrives while the store is
down is refused with a failure status (never a Success, never a silent abort),
and the sender's retry of it succeeds once the store is back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dicomnode.jobs import SQLJobStore
from tests.helpers import echo, store_statuses, storescu, wait_for
from tests.postgres_server import PostgresServer
from tests.scale.conftest import Receiver

pytestmark = [pytest.mark.peers, pytest.mark.postgres, pytest.mark.slow]

SLICES = 60


@dataclass(frozen=True)
class Answer:
    """What the sender saw for one instance: the C-STORE response's status
    (storescu's text), or ``None`` when none came."""

    path: Path
    status: str | None
    returncode: int


class Pusher(threading.Thread):
    """A scanner that sends its instances one by one, one association each, as
    fast as the node answers, noting every answer."""

    def __init__(self, paths: list[Path], port: int) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.port = port
        self.answers: list[Answer] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        for path in self.paths:
            sent = storescu([path], self.port, timeout=120)
            statuses = store_statuses(sent.stderr)  # one instance: one response at most
            with self._lock:
                self.answers.append(
                    Answer(path, statuses[-1] if statuses else None, sent.returncode)
                )

    def seen(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def count(self, success: bool) -> int:
        return sum((a.status == "Success") == success for a in self.seen())


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: it is stopped and started again."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.mark.parametrize("outage", ["stop", "crash"])
def test_a_store_restarted_during_a_push_loses_no_acknowledged_instance(
    own_postgres: PostgresServer,
    receiver: Callable[..., Receiver],
    ct_series: Callable[..., Any],
    outage: str,
) -> None:
    """``stop``: a fast shutdown (sessions ended, a checkpoint); ``crash``: an
    immediate one, as a power cut (recovery from the WAL at the next start)."""
    url = own_postgres.create_database("outage")
    node = receiver("a", url)
    series = ct_series(slices=SLICES, size=16)
    sop_of = dict(zip(series.paths, series.sop_uids, strict=True))
    pusher = Pusher(series.paths, node.port)
    pusher.start()

    wait_for(lambda: pusher.count(success=True) >= 5, 60, "5 instances stored", interval=0.05)
    getattr(own_postgres, outage)()
    wait_for(
        lambda: pusher.count(success=False) >= 3 or not pusher.is_alive(),
        60,
        "3 instances answered while the store is down",
        interval=0.05,
    )
    own_postgres.start()
    pusher.join(timeout=300)
    assert not pusher.is_alive(), "the push did not finish"

    answers = pusher.seen()
    assert [a.path for a in answers] == series.paths
    refused = [a for a in answers if a.status != "Success"]
    assert len(refused) >= 3, answers
    # refused with a status: a C-STORE response that is not Success, not an abort
    assert all(a.status is not None for a in refused), [
        (a.path.name, a.returncode) for a in refused
    ]
    assert echo(node.port), "the node no longer answers after the store came back"

    store = SQLJobStore(url)
    try:
        for answer in answers:
            if answer.status == "Success":
                assert store.has_instance(sop_of[answer.path]), answer
        retried = [storescu([a.path], node.port) for a in refused]
        assert [store_statuses(r.stderr) for r in retried] == [["Success"]] * len(refused)
        missing = [sop for sop in series.sop_uids if not store.has_instance(sop)]
        assert missing == []
    finally:
        store.close()
    assert node.proc is not None and node.proc.poll() is None, node.log()
