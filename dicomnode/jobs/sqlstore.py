"""The job store on SQLAlchemy: SQLite (the embedded default) or PostgreSQL.

SQLite: one connection per process, serialised by a lock, in WAL mode; writers
take the database lock with ``BEGIN IMMEDIATE`` so several processes
(receiving processes, the assembler) can share the file.
``synchronous=NORMAL`` keeps every commit across a process crash; a power loss
can lose the last commits, which start-up recovers by recording spool files
that have no row (the spool is fsynced before any row is written).

PostgreSQL (psycopg 3): several processes on several hosts share one database.
Every write transaction first takes one transaction-scoped advisory lock, so
writers are serialised as SQLite's are, and the checks each transaction makes
before it writes (an open round of the study, the state a job is in) still hold
when it commits; readers are not blocked. Claims of runs also skip rows another
transaction has locked (``FOR UPDATE SKIP LOCKED``).

The schema is made and upgraded by Alembic (:mod:`dicomnode.jobs.migrations`)
when a store opens a database.
"""

from __future__ import annotations

import fcntl
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Connection, CursorResult, Engine, RowMapping
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from dicomnode.errors import IllegalTransitionError, JobStoreError, NotFoundError, PurgedError
from dicomnode.jobs.audit import AuditEntry, AuditEvent, AuditRecord
from dicomnode.jobs.models import (
    InstanceRecord,
    Job,
    OutboxItem,
    PurgePlan,
    RecordOutcome,
    Run,
    RunSpec,
    Study,
    StudyRound,
    Transition,
)
from dicomnode.jobs.states import (
    JobState,
    check_discard,
    check_hold,
    check_holder,
    check_transition,
)
from dicomnode.protocol import ResultMessage, ResultObject

SCHEMA_VERSION = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    round INTEGER NOT NULL,
    parent_id INTEGER REFERENCES jobs(id),
    state TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    opened_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    updated_at REAL NOT NULL,
    pipeline TEXT,
    series_instance_uid TEXT,
    rule TEXT,
    destinations TEXT NOT NULL DEFAULT '[]',
    notify TEXT NOT NULL DEFAULT '[]',
    priority INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    traceback TEXT,
    result_dir TEXT,
    outbox_dir TEXT,
    purged_at REAL,
    result_status TEXT NOT NULL DEFAULT 'preliminary',
    notify_after TEXT NOT NULL DEFAULT 'delivered'
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_study_round
    ON jobs (study_instance_uid, round) WHERE kind = 'study';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    from_state TEXT,
    to_state TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    duplicates INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'PENDING',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sop_class_uid TEXT,
    sop_instance_uid TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    body TEXT,
    refers_to TEXT NOT NULL DEFAULT '[]',
    UNIQUE (job_id, destination, path)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS instances_job ON instances (job_id);
CREATE TABLE IF NOT EXISTS descriptors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    at REAL NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS descriptors_pipeline ON descriptors (pipeline, at);
"""

# -- schema version 6: shadow mode, radiologists' corrections, input range --
#: Run columns: ``shadow`` (1 for a candidate pipeline's run beside the
#: production one, never delivered) and ``out_of_range`` (``flag`` or
#: ``refuse``, from the rule).
_ADDED_JOB_COLUMNS_V6 = {
    "shadow": "INTEGER NOT NULL DEFAULT 0",
    "out_of_range": "TEXT NOT NULL DEFAULT 'flag'",
}
#: Tables: the agreement of each shadow run with its production run, the
#: corrected SEGs received (scored against the node's SEG), and every
#: promotion of a candidate pipeline (the audit record of ``shadow promote``).
_SCHEMA_V6 = """
CREATE TABLE IF NOT EXISTS shadow_agreement (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    production_pipeline TEXT NOT NULL,
    candidate_pipeline TEXT NOT NULL,
    production_job_id INTEGER NOT NULL,
    shadow_job_id INTEGER NOT NULL UNIQUE,
    study_instance_uid TEXT NOT NULL,
    at REAL NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_agreement_pair
    ON shadow_agreement (rule, production_pipeline, candidate_pipeline);
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    round_job_id INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    seg_sop_instance_uid TEXT NOT NULL,
    seg_path TEXT NOT NULL,
    matched_by TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'PENDING',
    scores TEXT,
    reason TEXT,
    received_at REAL NOT NULL,
    scored_at REAL
);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    rule TEXT NOT NULL,
    from_pipeline TEXT NOT NULL,
    to_pipeline TEXT NOT NULL,
    config_path TEXT NOT NULL,
    backup_path TEXT NOT NULL,
    by_user TEXT NOT NULL,
    agreement TEXT NOT NULL
);
"""

# -- schema version 8: the audit trail and holds -------------------------
#: Job columns: a job an admin held (``held_at``, ``held_by``) is not routed,
#: run or delivered until released.
_ADDED_HOLD_COLUMNS = {"held_at": "REAL", "held_by": "TEXT"}
#: The audit trail (see :mod:`dicomnode.jobs.audit`): append-only, the
#: triggers refuse every UPDATE and DELETE of a row.
_SCHEMA_V8 = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL DEFAULT '',
    target TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    study_instance_uid TEXT,
    patient_id TEXT,
    patient_name TEXT,
    accession_number TEXT,
    address TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_study ON audit (study_instance_uid);
CREATE INDEX IF NOT EXISTS audit_patient ON audit (patient_id);
CREATE INDEX IF NOT EXISTS audit_accession ON audit (accession_number);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: rows cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: rows cannot be deleted'); END;
"""
_AUDIT_COLUMNS = (
    "id, at, event, actor, action, target, outcome, study_instance_uid, patient_id, "
    "patient_name, accession_number, address, detail"
)

#: Indexes on columns an upgrade may have only just added.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_instance_uid, purged_at);
"""

_JOB_COLUMNS = (
    "id, kind, study_instance_uid, round, parent_id, state, calling_ae, opened_at, "
    "last_instance_at, instance_count, attempts, reason, updated_at, pipeline, "
    "series_instance_uid, rule, destinations, notify, priority, next_attempt_at, traceback, "
    "result_dir, outbox_dir, purged_at, result_status, notify_after, shadow, out_of_range, "
    "claimed_by, lease_until, queued_at, held_at, held_by"
)
#: Columns added after schema version 1, with their definitions (for upgrades).
#: ``outbox_dir`` and ``purged_at`` came with retention (version 3),
#: ``result_status`` and ``notify_after`` with typed outbox rows (version 4).
_ADDED_JOB_COLUMNS = {
    "pipeline": "TEXT",
    "series_instance_uid": "TEXT",
    "rule": "TEXT",
    "destinations": "TEXT NOT NULL DEFAULT '[]'",
    "notify": "TEXT NOT NULL DEFAULT '[]'",
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "next_attempt_at": "REAL",
    "traceback": "TEXT",
    "result_dir": "TEXT",
    "outbox_dir": "TEXT",
    "purged_at": "REAL",
    "result_status": "TEXT NOT NULL DEFAULT 'preliminary'",
    "notify_after": "TEXT NOT NULL DEFAULT 'delivered'",
}
#: Outbox columns added in schema version 4: what a row delivers, recorded by
#: the result writer (rows of earlier releases have none of them).
_ADDED_OUTBOX_COLUMNS = {
    "sop_class_uid": "TEXT",
    "sop_instance_uid": "TEXT",
    "study_instance_uid": "TEXT",
    "series_instance_uid": "TEXT",
    "body": "TEXT",
    "refers_to": "TEXT NOT NULL DEFAULT '[]'",
}
_OUTBOX_COLUMNS = (
    "id, job_id, destination, kind, path, state, attempts, next_attempt_at, last_error, "
    "sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid, body, refers_to"
)
#: Job columns added in schema version 7, for runs executed by workers elsewhere
#: (``runner.executor: celery``): the worker holding a RUNNING run and until when
#: (its lease), and when the run was last sent to its pipeline's queue.
_ADDED_LEASE_COLUMNS = {
    "claimed_by": "TEXT",
    "lease_until": "REAL",
    "queued_at": "REAL",
}
#: Columns of ``instances`` added in schema version 4: ``conflicts`` counts the
#: re-sent copies whose content differed from the kept one.
_ADDED_INSTANCE_COLUMNS = {"conflicts": "INTEGER NOT NULL DEFAULT 0"}
#: The states in which a job has nothing left to do (retention may purge it).
FINAL_STATES = (JobState.DONE, JobState.DISCARDED, JobState.DEAD)
#: An assembly round's own work ends at ROUTED (its runs carry on as jobs of
#: their own), so a ROUTED round counts as final too.
FINAL_ROUND_STATES = (JobState.ROUTED,)
_INSTANCE_COLUMNS = (
    "sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid, "
    "transfer_syntax_uid, modality, path, size, calling_ae, received_at"
)


def _job(row: Row) -> Job:
    common = {
        "id": row["id"],
        "study_instance_uid": row["study_instance_uid"],
        "round": row["round"],
        "state": JobState(row["state"]),
        "calling_ae": row["calling_ae"],
        "opened_at": row["opened_at"],
        "last_instance_at": row["last_instance_at"],
        "instance_count": row["instance_count"],
        "attempts": row["attempts"],
        "reason": row["reason"],
        "updated_at": row["updated_at"],
        "priority": row["priority"],
        "next_attempt_at": row["next_attempt_at"],
        "traceback": row["traceback"],
        "purged_at": row["purged_at"],
        "held_at": row["held_at"],
        "held_by": row["held_by"],
    }
    if row["kind"] == StudyRound.kind:
        return StudyRound(**common)
    return Run(
        **common,
        parent_id=row["parent_id"],
        pipeline=row["pipeline"],
        series_instance_uid=row["series_instance_uid"],
        rule=row["rule"],
        destinations=tuple(json.loads(row["destinations"])),
        notify=tuple(json.loads(row["notify"])),
        result_dir=row["result_dir"],
        outbox_dir=row["outbox_dir"],
        result_status=row["result_status"],
        notify_after=row["notify_after"],
        shadow=bool(row["shadow"]),
        out_of_range=row["out_of_range"],
        claimed_by=row["claimed_by"],
        lease_until=row["lease_until"],
        queued_at=row["queued_at"],
    )


def _round(row: Row) -> StudyRound:
    job = _job(row)
    assert isinstance(job, StudyRound), "selected by kind = 'study'"
    return job


def _run(row: Row) -> Run:
    job = _job(row)
    assert isinstance(job, Run), "selected by kind = 'run'"
    return job


def _outbox_item(row: Row) -> OutboxItem:
    values = dict(row)
    values["refers_to"] = tuple(json.loads(values["refers_to"] or "[]"))
    return OutboxItem(**values)


def _purged_error(job_id: int, purged_at: float) -> PurgedError:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(purged_at))
    return PurgedError(
        f"job {job_id} was purged by retention on {when} (storage.retention_days): its "
        "instances and results are no longer kept; send the study again to process it anew"
    )


def _job_row(cur: _Cursor, job_id: int, columns: str, *, live: bool = False) -> Row:
    """The job's ``columns``; :class:`NotFoundError` when there is no such job and,
    with ``live``, :class:`PurgedError` when retention purged it (``columns``
    must then include ``purged_at``)."""
    row: Row | None = cur.execute(
        f"SELECT {columns} FROM jobs WHERE id = ?{cur.for_update()}", (job_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    if live and row["purged_at"] is not None:
        raise _purged_error(job_id, row["purged_at"])
    return row


def _returned_id(cur: _Cursor) -> int:
    """The id an ``INSERT … RETURNING id`` gave."""
    row = cur.fetchone()
    assert row is not None
    return int(row["id"])


def _message(exc: SQLAlchemyError) -> str:
    """The database's own words, without SQLAlchemy's statement and link."""
    original = getattr(exc, "orig", None)
    return str(original if original is not None else exc).strip().splitlines()[0]


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


#: Called after a commit with the states that jobs moved to (:meth:`SQLJobStore.on_commit`).
CommitListener = Callable[[frozenset[JobState]], None]


#: The advisory lock every PostgreSQL write transaction takes first (any
#: constant shared by every process of a node; "dicomnode" in ASCII, cut to 63 bits).
_WRITE_LOCK = 0x6469636F6D6E6F64 & 0x7FFFFFFFFFFFFFFF
#: The advisory lock held while a PostgreSQL database is migrated.
_MIGRATE_LOCK = _WRITE_LOCK - 1
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The Alembic revision the legacy steps below bring a SQLite file to.
_BASELINE = "0001_schema_8"

Row = RowMapping


@lru_cache(maxsize=512)
def _dialect_sql(sql: str, dialect: str) -> str:
    """``sql`` as written here (``?`` placeholders, ``GREATEST``/``LEAST`` of
    values, ``GROUP_CONCAT``) for ``dialect``."""
    if dialect == "sqlite":
        return sql.replace("GREATEST(", "MAX(").replace("LEAST(", "MIN(")
    sql = re.sub(r"GROUP_CONCAT\(DISTINCT ([\w.]+)\)", r"STRING_AGG(DISTINCT \1, ',')", sql)
    return sql.replace("?", "%s")


class _Cursor:
    """What the store's methods use of a DB-API cursor, on a SQLAlchemy
    connection: ``execute`` (``?`` placeholders), ``executemany``, rows as
    mappings, ``rowcount``."""

    def __init__(self, conn: Connection, *, row_locks: bool = False) -> None:
        self._conn = conn
        self._dialect = conn.dialect.name
        self._result: CursorResult[Any] | None = None
        self._row_locks = row_locks

    def for_update(self, *, skip_locked: bool = False) -> str:
        """The clause that locks the rows a query reads until the transaction
        ends (PostgreSQL write transactions; SQLite locks the whole database);
        with ``skip_locked``, rows another transaction holds are passed over."""
        if not self._row_locks:
            return ""
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"

    def execute(self, sql: str, params: Sequence[object] = ()) -> _Cursor:
        self._result = self._conn.exec_driver_sql(_dialect_sql(sql, self._dialect), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> _Cursor:
        rows = [tuple(row) for row in rows]
        if rows:
            self._result = self._conn.exec_driver_sql(_dialect_sql(sql, self._dialect), rows)
        return self

    def fetchone(self) -> Row | None:
        assert self._result is not None
        return self._result.mappings().fetchone()

    def one(self) -> Row:
        """The one row a query gives (an aggregate, a row known to exist)."""
        assert self._result is not None
        return self._result.mappings().one()

    def fetchall(self) -> list[Row]:
        assert self._result is not None
        return list(self._result.mappings().fetchall())

    @property
    def rowcount(self) -> int:
        assert self._result is not None
        return int(self._result.rowcount)


def store_url(path_or_url: Path | str) -> str:
    """A SQLAlchemy URL for a database file path or URL (``sqlite:///PATH``,
    ``postgresql+psycopg://…``; ``postgresql://`` means psycopg 3 too)."""
    text = str(path_or_url)
    if "://" not in text:
        return f"sqlite:///{text}"
    if text.startswith("postgresql://") or text.startswith("postgres://"):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = Path(sa.make_url(url).database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per process, shared by its threads under the store's
        # lock; the driver's own transaction handling off (the store sends
        # BEGIN IMMEDIATE / COMMIT itself).
        engine = sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False, "timeout": 60.0, "isolation_level": None},
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            for pragma in (
                "busy_timeout = 60000",
                "journal_mode = WAL",
                "synchronous = NORMAL",
                "foreign_keys = ON",
            ):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        return engine
    if url.startswith("postgresql"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    raise JobStoreError(f"job store: unsupported database URL scheme in {url.split(':', 1)[0]!r}")


def _alembic(conn: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def _has_tables(conn: Connection) -> bool:
    return "jobs" in sa.inspect(conn).get_table_names()


def _has_alembic(conn: Connection) -> bool:
    return "alembic_version" in sa.inspect(conn).get_table_names()


def migrate(engine: Engine, where: str) -> None:
    """Bring the database to the current schema.

    A new database is created by the migrations. A SQLite file of a release
    before migrations (schema versions 1 to 8) is first brought to version 8
    in place by :func:`_upgrade_legacy_sqlite`, then stamped with the
    migrations' baseline. Processes opening the same database at once take
    turns (a file lock beside a SQLite file, an advisory lock on PostgreSQL).
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
            try:
                _migrate(conn)
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
                conn.commit()
            return
        with open(f"{where}.migrate-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _migrate(conn)


def _migrate(conn: Connection) -> None:
    if conn.dialect.name == "sqlite" and _has_tables(conn) and not _has_alembic(conn):
        _upgrade_legacy_sqlite(conn)
        command.stamp(_alembic(conn), _BASELINE)
        conn.commit()
    command.upgrade(_alembic(conn), "head")
    conn.commit()
    with conn.begin() if not conn.in_transaction() else conn.begin_nested():
        conn.exec_driver_sql(
            _dialect_sql(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                conn.dialect.name,
            ),
            (str(SCHEMA_VERSION),),
        )
    conn.commit()


def _upgrade_legacy_sqlite(conn: Connection) -> None:
    """A SQLite file written before migrations, brought to schema version 8 in
    place: the tables and columns each release added, as it added them."""
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.executescript(_SCHEMA)
    for table, added in (
        ("jobs", _ADDED_JOB_COLUMNS),
        ("outbox", _ADDED_OUTBOX_COLUMNS),
        ("instances", _ADDED_INSTANCE_COLUMNS),
        ("jobs", _ADDED_JOB_COLUMNS_V6),
        ("jobs", _ADDED_LEASE_COLUMNS),
        ("jobs", _ADDED_HOLD_COLUMNS),
    ):
        present = {r[1] for r in raw.execute(f"PRAGMA table_info({table})")}
        for column, definition in added.items():
            if column not in present:
                raw.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    raw.executescript(_SCHEMA_V6)
    raw.executescript(_SCHEMA_V8)
    raw.executescript(_INDEXES)


class SQLJobStore:
    """:class:`~dicomnode.jobs.store.JobStore` on SQLite or PostgreSQL.

    Parameters
    ----------
    path : Path or str
        The SQLite database file (its directory is created when missing), or
        a database URL: ``sqlite:///PATH``, ``postgresql+psycopg://USER@HOST/DB``.
    clock : callable, optional
        Returns the current time in seconds since the epoch (tests may pass
        their own).
    """

    def __init__(self, path: Path | str, clock: object = None) -> None:
        self.url = store_url(path)
        self._engine = _engine(self.url)
        self.dialect = self._engine.dialect.name
        #: what messages name: the file's name, or the database's
        self.name = (
            Path(self._engine.url.database or "").name
            if self.dialect == "sqlite"
            else f"{self._engine.url.database} on {self._engine.url.host}"
        )
        self._clock = clock if callable(clock) else time.time
        self._lock = threading.RLock()
        #: the states jobs moved to in the transaction in progress (under the lock)
        self._moved: set[JobState] = set()
        self._listeners: list[CommitListener] = []
        try:
            migrate(self._engine, str(self._engine.url.database))
            # SQLite: the one connection, kept; PostgreSQL: one per transaction
            self._conn: Connection | None = (
                self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                if self.dialect == "sqlite"
                else None
            )
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise JobStoreError(f"job store {self.name}: {_message(exc)}") from exc

    @property
    def path(self) -> Path:
        """The SQLite database file."""
        return Path(self._engine.url.database or "")

    def _now(self) -> float:
        value = self._clock()
        assert isinstance(value, float | int)
        return float(value)

    def on_commit(self, listener: CommitListener) -> None:
        """Call ``listener`` after every transaction of this store object that
        committed job transitions, with the states the jobs moved to.

        It runs in the committing thread, after the commit and outside the
        store's lock, so it must be quick and must not raise (a stage's
        :class:`~dicomnode.scheduling.Wakeup` ``set`` is). A transaction that
        rolled back calls nothing. Commits by other processes (receiving
        processes, Celery workers) are not seen: the stages' polling finds
        those.
        """
        self._listeners.append(listener)

    @contextmanager
    def _connection(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A connection with no transaction open: SQLite's one connection, or
        one from the PostgreSQL pool (repeatable read for a ``snapshot``)."""
        if self._conn is not None:
            yield self._conn
            return
        with self._engine.connect() as conn:
            if snapshot:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    @contextmanager
    def _transaction(self, *, write: bool, serialised: bool = True) -> Iterator[_Cursor]:
        """One transaction: committed, or rolled back when the block raises;
        database errors become :class:`JobStoreError`. After a commit that
        recorded transitions the :meth:`on_commit` listeners run.

        On PostgreSQL a ``serialised`` write transaction takes the write lock
        first; one that is not (the claims of runs) takes row locks only, so a
        worker claiming a run does not wait for receivers recording instances.
        Every write transaction locks the job rows it reads with
        :func:`_job_row`, so a claim and another writer never both act on what
        they read of the same run."""
        moved: frozenset[JobState] = frozenset()
        with self._lock:
            self._moved.clear()
            try:
                with self._connection(snapshot=not write) as conn:
                    if self._conn is not None:
                        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
                        try:
                            yield _Cursor(conn)
                        except BaseException:
                            conn.exec_driver_sql("ROLLBACK")
                            raise
                        conn.exec_driver_sql("COMMIT")
                    else:
                        with conn.begin():
                            if write and serialised:
                                conn.exec_driver_sql(
                                    "SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,)
                                )
                            yield _Cursor(conn, row_locks=write)
                moved = frozenset(self._moved)
            except SQLAlchemyError as exc:
                raise JobStoreError(f"job store {self.name}: {_message(exc)}") from exc
            finally:
                self._moved.clear()
        if moved:
            for listener in self._listeners:
                listener(moved)

    def _write(self) -> AbstractContextManager[_Cursor]:
        """A write transaction, holding the database's write lock from its start."""
        return self._transaction(write=True)

    def _claim(self) -> AbstractContextManager[_Cursor]:
        """A write transaction that claims runs (see :meth:`_transaction`)."""
        return self._transaction(write=True, serialised=False)

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]:
        with self._lock:
            try:
                with self._connection() as conn:
                    rows = _Cursor(conn).execute(sql, params).fetchall()
                    if conn.in_transaction():
                        conn.rollback()
                    return rows
            except SQLAlchemyError as exc:
                raise JobStoreError(f"job store {self.name}: {_message(exc)}") from exc

    def _snapshot(self) -> AbstractContextManager[_Cursor]:
        """A read transaction: every query inside sees the same database state."""
        return self._transaction(write=False)

    def _add_transition(
        self,
        cur: _Cursor,
        job_id: int,
        from_state: JobState | None,
        to_state: JobState,
        at: float,
        reason: str | None,
    ) -> None:
        cur.execute(
            "INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (job_id, None if from_state is None else str(from_state), str(to_state), at, reason),
        )
        self._moved.add(to_state)

    # -- ingress ---------------------------------------------------------

    def record_instance(self, record: InstanceRecord) -> RecordOutcome:
        """See :meth:`dicomnode.jobs.store.JobStore.record_instance`."""
        now = record.received_at
        with self._write() as cur:
            existing = cur.execute(
                "SELECT path, job_id FROM instances WHERE sop_instance_uid = ?",
                (record.sop_instance_uid,),
            ).fetchone()
            if existing is not None:
                cur.execute(
                    "UPDATE instances SET duplicates = duplicates + 1 WHERE sop_instance_uid = ?",
                    (record.sop_instance_uid,),
                )
                return RecordOutcome(
                    job_id=existing["job_id"],
                    duplicate=True,
                    kept_path=existing["path"],
                    new_round=False,
                )
            open_round = cur.execute(
                "SELECT id FROM jobs WHERE kind = 'study' AND study_instance_uid = ? "
                "AND state = ? ORDER BY round DESC LIMIT 1",
                (record.study_instance_uid, str(JobState.RECEIVED)),
            ).fetchone()
            new_round = open_round is None
            if open_round is None:
                last = cur.execute(
                    "SELECT COALESCE(MAX(round), 0) AS r FROM jobs "
                    "WHERE kind = 'study' AND study_instance_uid = ?",
                    (record.study_instance_uid,),
                ).one()
                cur.execute(
                    "INSERT INTO jobs (kind, study_instance_uid, round, state, calling_ae, "
                    "opened_at, last_instance_at, updated_at) "
                    "VALUES ('study', ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        record.study_instance_uid,
                        int(last["r"]) + 1,
                        str(JobState.RECEIVED),
                        record.calling_ae,
                        now,
                        now,
                        now,
                    ),
                )
                job_id = _returned_id(cur)
                self._add_transition(cur, job_id, None, JobState.RECEIVED, now, None)
            else:
                job_id = int(open_round["id"])
            cur.execute(
                f"INSERT INTO instances ({_INSTANCE_COLUMNS}, job_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.sop_instance_uid,
                    record.series_instance_uid,
                    record.study_instance_uid,
                    record.sop_class_uid,
                    record.transfer_syntax_uid,
                    record.modality,
                    record.path,
                    record.size,
                    record.calling_ae,
                    now,
                    job_id,
                ),
            )
            cur.execute(
                "UPDATE jobs SET instance_count = instance_count + 1, "
                "last_instance_at = GREATEST(last_instance_at, ?), updated_at = ? WHERE id = ?",
                (now, now, job_id),
            )
        return RecordOutcome(
            job_id=job_id, duplicate=False, kept_path=record.path, new_round=new_round
        )

    def record_conflict(self, sop_instance_uid: str) -> None:
        """See :meth:`dicomnode.jobs.store.JobStore.record_conflict`."""
        with self._write() as cur:
            cur.execute(
                "UPDATE instances SET conflicts = conflicts + 1 WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no instance {sop_instance_uid}")

    def has_instance(self, sop_instance_uid: str) -> bool:
        """See :meth:`dicomnode.jobs.store.JobStore.has_instance`."""
        rows = self._read("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return bool(rows)

    # -- assembly --------------------------------------------------------

    def complete_due(self, now: float, quiet_seconds: float, max_wait_seconds: float) -> list[int]:
        """See :meth:`dicomnode.jobs.store.JobStore.complete_due`."""
        completed: list[int] = []
        with self._write() as cur:
            rows = cur.execute(
                "SELECT id, last_instance_at, opened_at FROM jobs "
                "WHERE kind = 'study' AND state = ? "
                "AND (last_instance_at + ? <= ? OR opened_at + ? <= ?)",
                (str(JobState.RECEIVED), quiet_seconds, now, max_wait_seconds, now),
            ).fetchall()
            for row in rows:
                quiet_done = row["last_instance_at"] + quiet_seconds <= now
                reason = (
                    f"quiet for {quiet_seconds:g} s"
                    if quiet_done
                    else f"maximum wait of {max_wait_seconds:g} s reached"
                )
                updated = cur.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, reason = ? "
                    "WHERE id = ? AND state = ?",
                    (str(JobState.COMPLETE), now, reason, row["id"], str(JobState.RECEIVED)),
                ).rowcount
                if updated == 1:
                    self._add_transition(
                        cur, row["id"], JobState.RECEIVED, JobState.COMPLETE, now, reason
                    )
                    completed.append(int(row["id"]))
        return completed

    def next_due(self, quiet_seconds: float, max_wait_seconds: float) -> float | None:
        """See :meth:`dicomnode.jobs.store.JobStore.next_due`."""
        rows = self._read(
            "SELECT MIN(LEAST(last_instance_at + ?, opened_at + ?)) AS due FROM jobs "
            "WHERE kind = 'study' AND state = ?",
            (quiet_seconds, max_wait_seconds, str(JobState.RECEIVED)),
        )
        due = rows[0]["due"] if rows else None
        return None if due is None else float(due)

    # -- every stage -----------------------------------------------------

    def transition(
        self,
        job_id: int,
        target: JobState,
        reason: str | None = None,
        *,
        expected: JobState | None = None,
    ) -> Job:
        """See :meth:`dicomnode.jobs.store.JobStore.transition`.

        Raises
        ------
        NotFoundError
            No such job.
        PurgedError
            Retention removed the job's files.
        IllegalTransitionError
            The job's state does not lead to ``target``, or is not ``expected``.
        """
        now = self._now()
        with self._write() as cur:
            row = _job_row(cur, job_id, "state, purged_at", live=True)
            current = JobState(row["state"])
            if expected is not None and current != expected:
                raise IllegalTransitionError(
                    f"job {job_id} is {current}, expected {expected} before moving to {target}"
                )
            check_transition(current, target)
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (str(target), now, reason, job_id),
            )
            self._add_transition(cur, job_id, current, target, now, reason)
        return self.get_job(job_id)

    def get_job(self, job_id: int) -> Job:
        """See :meth:`dicomnode.jobs.store.JobStore.get_job`."""
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"no job {job_id}")
        return _job(rows[0])

    def get_run(self, job_id: int) -> Run:
        """See :meth:`dicomnode.jobs.store.JobStore.get_run`."""
        job = self.get_job(job_id)
        if not isinstance(job, Run):
            raise NotFoundError(f"job {job_id} is a study round, not a pipeline run")
        return job

    def jobs(
        self, *, study_instance_uid: str | None = None, state: JobState | None = None
    ) -> list[Job]:
        """See :meth:`dicomnode.jobs.store.JobStore.jobs`."""
        clauses: list[str] = []
        params: list[object] = []
        if study_instance_uid is not None:
            clauses.append("study_instance_uid = ?")
            params.append(study_instance_uid)
        if state is not None:
            clauses.append("state = ?")
            params.append(str(state))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC",
            tuple(params),
        )
        return [_job(row) for row in rows]

    def history(self, job_id: int) -> list[Transition]:
        """See :meth:`dicomnode.jobs.store.JobStore.history`."""
        rows = self._read(
            "SELECT job_id, from_state, to_state, at, reason FROM transitions "
            "WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [
            Transition(
                job_id=row["job_id"],
                from_state=None if row["from_state"] is None else JobState(row["from_state"]),
                to_state=JobState(row["to_state"]),
                at=row["at"],
                reason=row["reason"],
            )
            for row in rows
        ]

    def studies(self) -> list[Study]:
        """See :meth:`dicomnode.jobs.store.JobStore.studies`.

        A study whose rounds retention purged is still listed, with the
        instance counts of what the spool holds now (none when all were purged).
        """
        rows = self._read(
            "WITH held AS (SELECT study_instance_uid AS uid, "
            " GROUP_CONCAT(DISTINCT modality) AS modalities, "
            " COUNT(DISTINCT series_instance_uid) AS series_count, "
            " COUNT(*) AS instance_count, SUM(duplicates) AS duplicate_count, "
            " SUM(conflicts) AS conflict_count, "
            " MIN(received_at) AS first_at, MAX(received_at) AS last_at "
            " FROM instances GROUP BY study_instance_uid) "
            "SELECT j.study_instance_uid AS uid, h.modalities, "
            "COALESCE(h.series_count, 0) AS series_count, "
            "COALESCE(h.instance_count, 0) AS instance_count, "
            "COALESCE(h.duplicate_count, 0) AS duplicate_count, "
            "COALESCE(h.conflict_count, 0) AS conflict_count, "
            "COUNT(*) AS rounds, "
            "SUM(CASE WHEN j.purged_at IS NOT NULL THEN 1 ELSE 0 END) AS purged_rounds, "
            "MAX(j.purged_at) AS purged_at, "
            "MIN(LEAST(COALESCE(h.first_at, j.opened_at), j.opened_at)) AS first_at, "
            "MAX(GREATEST(COALESCE(h.last_at, j.last_instance_at), j.last_instance_at)) "
            "AS last_at, "
            "(SELECT l.state FROM jobs l WHERE l.kind = 'study' "
            " AND l.study_instance_uid = j.study_instance_uid "
            " ORDER BY l.round DESC LIMIT 1) AS latest_state "
            "FROM jobs j LEFT JOIN held h ON h.uid = j.study_instance_uid "
            "WHERE j.kind = 'study' GROUP BY j.study_instance_uid, h.modalities, h.series_count, "
            "h.instance_count, h.duplicate_count, h.conflict_count ORDER BY last_at DESC"
        )
        return [
            Study(
                study_instance_uid=row["uid"],
                modalities=row["modalities"] or "",
                series_count=row["series_count"],
                instance_count=row["instance_count"],
                duplicate_count=row["duplicate_count"],
                conflict_count=row["conflict_count"],
                rounds=row["rounds"],
                first_received_at=row["first_at"],
                last_received_at=row["last_at"],
                latest_state=JobState(row["latest_state"]),
                purged_rounds=row["purged_rounds"],
                purged_at=row["purged_at"],
            )
            for row in rows
        ]

    def instances(self, study_instance_uid: str) -> list[InstanceRecord]:
        """See :meth:`dicomnode.jobs.store.JobStore.instances`."""
        rows = self._read(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances "
            "WHERE study_instance_uid = ? ORDER BY received_at",
            (study_instance_uid,),
        )
        return [InstanceRecord(**dict(row)) for row in rows]

    def duplicates(self, sop_instance_uid: str) -> int:
        """How many duplicate copies of an instance were received."""
        rows = self._read(
            "SELECT duplicates FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        if not rows:
            raise NotFoundError(f"no instance {sop_instance_uid}")
        return int(rows[0]["duplicates"])

    def conflicts(self, sop_instance_uid: str) -> int:
        """How many of an instance's duplicate copies differed from the kept one."""
        rows = self._read(
            "SELECT conflicts FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        if not rows:
            raise NotFoundError(f"no instance {sop_instance_uid}")
        return int(rows[0]["conflicts"])

    # -- assembly with per-study timing ----------------------------------

    def open_rounds(self) -> list[StudyRound]:
        """Every study round still receiving (RECEIVED), oldest first."""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE kind = 'study' AND state = ? ORDER BY id",
            (str(JobState.RECEIVED),),
        )
        return [_round(row) for row in rows]

    def complete_round(
        self, job_id: int, now: float, quiet_seconds: float, max_wait_seconds: float
    ) -> bool:
        """Complete one round if, inside the transaction, it is still RECEIVED
        and due under the given timing; return whether it was completed."""
        with self._write() as cur:
            row = cur.execute(
                "SELECT last_instance_at, opened_at FROM jobs WHERE id = ? AND state = ?",
                (job_id, str(JobState.RECEIVED)),
            ).fetchone()
            if row is None:
                return False
            if row["last_instance_at"] + quiet_seconds <= now:
                reason = f"quiet for {quiet_seconds:g} s"
            elif row["opened_at"] + max_wait_seconds <= now:
                reason = f"maximum wait of {max_wait_seconds:g} s reached"
            else:
                return False
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (str(JobState.COMPLETE), now, reason, job_id),
            )
            self._add_transition(cur, job_id, JobState.RECEIVED, JobState.COMPLETE, now, reason)
        return True

    # -- routing ---------------------------------------------------------

    def instances_of(self, job_id: int) -> list[InstanceRecord]:
        """The instances recorded in one study round."""
        rows = self._read(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE job_id = ? ORDER BY received_at",
            (job_id,),
        )
        return [InstanceRecord(**dict(row)) for row in rows]

    def route(self, job_id: int, runs: list[RunSpec], reason: str) -> list[int]:
        """Record a routing decision in one transaction: the round moves
        COMPLETE → ROUTED with one ROUTED run job per entry of ``runs``, or
        COMPLETE → DISCARDED when ``runs`` is empty. Return the run job ids.

        Raises
        ------
        IllegalTransitionError
            The round is not COMPLETE (already routed, for instance).
        """
        now = self._now()
        created: list[int] = []
        target = JobState.ROUTED if runs else JobState.DISCARDED
        with self._write() as cur:
            row = _job_row(
                cur, job_id, "state, study_instance_uid, round, calling_ae, instance_count"
            )
            current = JobState(row["state"])
            if current != JobState.COMPLETE:
                raise IllegalTransitionError(f"job {job_id} is {current}, not COMPLETE")
            if _job_row(cur, job_id, "held_at")["held_at"] is not None:
                raise IllegalTransitionError(f"job {job_id} is held")
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (str(target), now, reason, job_id),
            )
            self._add_transition(cur, job_id, current, target, now, reason)
            for run in runs:
                cur.execute(
                    "INSERT INTO jobs (kind, study_instance_uid, round, parent_id, state, "
                    "calling_ae, opened_at, last_instance_at, instance_count, updated_at, "
                    "pipeline, series_instance_uid, rule, destinations, notify, priority, "
                    "result_status, notify_after, shadow, out_of_range) "
                    "VALUES ('run', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING id",
                    (
                        row["study_instance_uid"],
                        row["round"],
                        job_id,
                        str(JobState.ROUTED),
                        row["calling_ae"],
                        now,
                        now,
                        row["instance_count"],
                        now,
                        run.pipeline,
                        run.series_instance_uid,
                        run.rule,
                        json.dumps(list(run.destinations)),
                        json.dumps(list(run.notify)),
                        run.priority,
                        run.result_status,
                        run.notify_after,
                        int(run.shadow),
                        run.out_of_range,
                    ),
                )
                run_id = _returned_id(cur)
                role = " (shadow)" if run.shadow else ""
                self._add_transition(
                    cur,
                    run_id,
                    None,
                    JobState.ROUTED,
                    now,
                    f"rule {run.rule}: {run.pipeline}{role}",
                )
                created.append(run_id)
        return created

    # -- runner ----------------------------------------------------------

    def claim_runs(self, now: float, limit: int, claimant: str | None = None) -> list[Run]:
        """Move up to ``limit`` runs that are ROUTED, or FAILED_RETRYABLE and
        due, to RUNNING (highest priority first) and return them; ``claimant``
        (the node that runs them, without a lease) is recorded as their holder,
        so a node sharing the store that starts leaves them alone (see
        :meth:`requeue_orphans`)."""
        if limit <= 0:
            return []
        claimed: list[int] = []
        with self._claim() as cur:
            rows = cur.execute(
                "SELECT id, state FROM jobs WHERE kind = 'run' AND (state = ? "
                "OR (state = ? AND COALESCE(next_attempt_at, 0) <= ?)) AND held_at IS NULL "
                f"ORDER BY priority DESC, id LIMIT ?{cur.for_update(skip_locked=True)}",
                (str(JobState.ROUTED), str(JobState.FAILED_RETRYABLE), now, limit),
            ).fetchall()
            for row in rows:
                current = JobState(row["state"])
                cur.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, attempts = attempts + 1, "
                    "reason = NULL, claimed_by = ?, lease_until = NULL, queued_at = NULL "
                    "WHERE id = ?",
                    (str(JobState.RUNNING), now, claimant, row["id"]),
                )
                self._add_transition(cur, row["id"], current, JobState.RUNNING, now, None)
                claimed.append(int(row["id"]))
        return [self.get_run(job_id) for job_id in claimed]

    def finish_run(
        self,
        job_id: int,
        result_dir: str,
        summary: str,
        objects: Sequence[ResultObject] = (),
        messages: Sequence[ResultMessage] = (),
        *,
        claimant: str | None = None,
    ) -> Run:
        """RUNNING → RESULTS_WRITTEN with the run's outbox, in one transaction;
        on to DONE when the run has nowhere to deliver to.

        Only a RUNNING run takes a result, and a run a worker claimed only
        from that worker (``claimant``): a second completion of the same run,
        or one from a worker whose lease was lost, raises
        :class:`~dicomnode.errors.LeaseLostError` and queues nothing, so a run
        executed twice is delivered once.

        Each object goes to each of the run's ``destinations`` (one row per
        object and destination, with its UIDs), each of ``notify`` gets one
        notification row holding the message the writer built for it (a
        destination the writer built none for gets a row without a message,
        which export ends DEAD with the reason). Rows of an earlier attempt of
        the run are replaced. The folder holding ``objects`` is recorded as the
        run's ``outbox_dir`` (retention removes it).
        """
        now = self._now()
        with self._write() as cur:
            row = _job_row(
                cur,
                job_id,
                "state, destinations, notify, shadow, claimed_by, lease_until, "
                "study_instance_uid, pipeline",
            )
            current = JobState(row["state"])
            check_holder(job_id, current, row["claimed_by"], row["lease_until"], claimant=claimant)
            check_transition(current, JobState.RESULTS_WRITTEN)
            if row["shadow"]:  # a candidate's results are kept, never delivered
                messages, shadow_only = (), True
            else:
                shadow_only = False
            folders = {str(Path(item.path).parent) for item in objects}
            outbox_dir = folders.pop() if len(folders) == 1 else None
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, result_dir = ?, "
                "outbox_dir = ?, traceback = NULL, next_attempt_at = NULL, lease_until = NULL "
                "WHERE id = ?",
                (str(JobState.RESULTS_WRITTEN), now, summary, result_dir, outbox_dir, job_id),
            )
            self._add_transition(cur, job_id, current, JobState.RESULTS_WRITTEN, now, summary)
            destinations = [] if shadow_only else json.loads(row["destinations"])
            notify = [] if shadow_only else json.loads(row["notify"])
            built = {message.destination: message for message in messages}
            cur.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))
            self._insert_audit(
                cur,
                now,
                AuditEntry(
                    AuditEvent.RESULTS_WRITTEN,
                    claimant or "node",
                    action=str(row["pipeline"] or ""),
                    target=f"job {job_id}",
                    study_instance_uid=row["study_instance_uid"],
                    detail={
                        "objects": [
                            {"type": item.kind, "sop_instance_uid": item.sop_instance_uid}
                            for item in objects
                        ],
                        "messages": len(messages),
                        "shadow": bool(row["shadow"]),
                    },
                ),
            )
            rows: list[tuple[object, ...]] = [
                (
                    destination,
                    "dicom",
                    str(item.path),
                    item.sop_class_uid,
                    item.sop_instance_uid,
                    item.study_instance_uid,
                    item.series_instance_uid,
                    None,
                    "[]",
                )
                for destination in destinations
                for item in objects
            ]
            for destination in notify:
                message = built.get(destination)
                rows.append(
                    (
                        destination,
                        "notification",
                        "",
                        None,
                        None,
                        None,
                        None,
                        None if message is None else message.body,
                        json.dumps([] if message is None else list(message.refers_to)),
                    )
                )
            cur.executemany(
                "INSERT INTO outbox (job_id, destination, kind, path, sop_class_uid, "
                "sop_instance_uid, study_instance_uid, series_instance_uid, body, refers_to, "
                "state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'PENDING', ?, ?)",
                [(job_id, *values, now, now) for values in rows],
            )
            if not rows:
                reason = (
                    "shadow run: results kept, not delivered"
                    if shadow_only
                    else "no destinations configured"
                )
                cur.execute(
                    "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                    (str(JobState.DONE), now, job_id),
                )
                self._add_transition(
                    cur, job_id, JobState.RESULTS_WRITTEN, JobState.DONE, now, reason
                )
        return self.get_run(job_id)

    def notified_before(self, job_id: int) -> set[str]:
        """The notify destinations of a run that already received a result of
        the same study, series and pipeline (from this run or an earlier one):
        a new result for them is a correction.

        Raises
        ------
        NotFoundError
            No such job.
        """
        with self._snapshot() as cur:
            row = _job_row(cur, job_id, "study_instance_uid, series_instance_uid, pipeline")
            rows = cur.execute(
                "SELECT DISTINCT o.destination FROM outbox o JOIN jobs j ON j.id = o.job_id "
                "WHERE j.kind = 'run' AND j.study_instance_uid = ? "
                "AND j.series_instance_uid IS NOT DISTINCT FROM ? "
                "AND j.pipeline IS NOT DISTINCT FROM ? "
                "AND o.kind = 'notification' AND o.state = 'DELIVERED'",
                (row["study_instance_uid"], row["series_instance_uid"], row["pipeline"]),
            ).fetchall()
        return {str(r["destination"]) for r in rows}

    def fail_run(
        self,
        job_id: int,
        reason: str,
        traceback: str | None,
        retry_at: float | None,
        *,
        claimant: str | None = None,
        expired_at: float | None = None,
    ) -> Run:
        """RUNNING → FAILED_RETRYABLE (due again at ``retry_at``) or, when
        ``retry_at`` is ``None``, → DEAD. The traceback is kept on the job.

        As for :meth:`finish_run`, a run a worker claimed takes the failure
        from that worker (``claimant``) only; with ``expired_at`` (a reclaim
        of a run whose worker stopped renewing) only if the lease ran out
        before then.

        Raises
        ------
        LeaseLostError
            The run is not RUNNING, not held by ``claimant``, or still leased.
        """
        now = self._now()
        target = JobState.DEAD if retry_at is None else JobState.FAILED_RETRYABLE
        with self._write() as cur:
            row = _job_row(cur, job_id, "state, claimed_by, lease_until")
            current = JobState(row["state"])
            check_holder(
                job_id,
                current,
                row["claimed_by"],
                row["lease_until"],
                claimant=claimant,
                expired_at=expired_at,
            )
            check_transition(current, target)
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, traceback = ?, "
                "next_attempt_at = ?, lease_until = NULL WHERE id = ?",
                (str(target), now, reason, traceback, retry_at, job_id),
            )
            self._add_transition(cur, job_id, current, target, now, reason)
        return self.get_run(job_id)

    def outbox(self, job_id: int) -> list[OutboxItem]:
        """The delivery rows of one run."""
        rows = self._read(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [_outbox_item(row) for row in rows]

    # -- runs on workers elsewhere: queue and leases (schema version 7) ----

    def runs_to_queue(self, now: float, requeue_after: float, limit: int) -> list[Run]:
        """Runs to send to their pipeline's queue, highest priority first: ROUTED,
        or FAILED_RETRYABLE and due, and not sent yet, or sent ``requeue_after``
        seconds ago or more without a worker claiming them (the message was
        lost, e.g. with a broker that restarted empty)."""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE kind = 'run' AND (state = ? "
            "OR (state = ? AND COALESCE(next_attempt_at, 0) <= ?)) AND held_at IS NULL "
            "AND (queued_at IS NULL OR queued_at + ? <= ?) "
            "ORDER BY priority DESC, id LIMIT ?",
            (
                str(JobState.ROUTED),
                str(JobState.FAILED_RETRYABLE),
                now,
                requeue_after,
                now,
                limit,
            ),
        )
        return [_run(row) for row in rows]

    def mark_queued(self, job_id: int, now: float) -> None:
        """Record that the run was sent to its queue at ``now``."""
        with self._write() as cur:
            cur.execute("UPDATE jobs SET queued_at = ? WHERE id = ?", (now, job_id))

    def claim_run(self, job_id: int, claimant: str, now: float, lease_seconds: float) -> Run | None:
        """A worker's claim of the run a message named: ROUTED, or
        FAILED_RETRYABLE and due, → RUNNING, held by ``claimant`` until
        ``now + lease_seconds``, attempts counted. Return the run, or ``None``
        when it is not there to claim (another worker holds it, it finished,
        it is waiting out its backoff, or it is no run): a message delivered
        twice then does nothing.

        The row is locked waiting, not skipped when locked: whoever holds it
        (a receiver marking the run queued, another worker's claim) holds it
        for one short transaction, and a message dropped because of it would
        leave the run for ``requeue_seconds``.
        """
        with self._claim() as cur:
            row = cur.execute(
                "SELECT state, next_attempt_at, purged_at, held_at FROM jobs "
                f"WHERE id = ? AND kind = 'run'{cur.for_update()}",
                (job_id,),
            ).fetchone()
            if row is None or row["purged_at"] is not None or row["held_at"] is not None:
                return None
            current = JobState(row["state"])
            due = current == JobState.ROUTED or (
                current == JobState.FAILED_RETRYABLE and (row["next_attempt_at"] or 0) <= now
            )
            if not due:
                return None
            check_transition(current, JobState.RUNNING)
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, attempts = attempts + 1, "
                "reason = NULL, claimed_by = ?, lease_until = ?, queued_at = NULL WHERE id = ?",
                (str(JobState.RUNNING), now, claimant, now + lease_seconds, job_id),
            )
            self._add_transition(cur, job_id, current, JobState.RUNNING, now, f"on {claimant}")
        return self.get_run(job_id)

    def renew_lease(self, job_id: int, claimant: str, until: float) -> bool:
        """Extend ``claimant``'s lease of a RUNNING run to ``until``; ``False``
        when it no longer holds the run (reclaimed after its lease expired)."""
        with self._write() as cur:
            cur.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ? AND claimed_by = ?",
                (until, job_id, str(JobState.RUNNING), claimant),
            )
            return cur.rowcount == 1

    def expired_leases(self, now: float) -> list[Run]:
        """RUNNING runs whose worker's lease ran out before ``now``."""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE kind = 'run' AND state = ? "
            "AND claimed_by IS NOT NULL AND lease_until < ? ORDER BY id",
            (str(JobState.RUNNING), now),
        )
        return [_run(row) for row in rows]

    # -- export ----------------------------------------------------------

    def start_exports(self) -> list[int]:
        """Move every RESULTS_WRITTEN run to EXPORTING; return their ids."""
        now = self._now()
        with self._write() as cur:
            rows = cur.execute(
                "SELECT id FROM jobs WHERE kind = 'run' AND state = ? AND held_at IS NULL",
                (str(JobState.RESULTS_WRITTEN),),
            ).fetchall()
            for row in rows:
                cur.execute(
                    "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                    (str(JobState.EXPORTING), now, row["id"]),
                )
                self._add_transition(
                    cur, row["id"], JobState.RESULTS_WRITTEN, JobState.EXPORTING, now, None
                )
        return [int(row["id"]) for row in rows]

    def due_deliveries(self, now: float) -> list[OutboxItem]:
        """PENDING outbox rows of EXPORTING runs that are due now."""
        columns = ", ".join(f"o.{c}" for c in _OUTBOX_COLUMNS.split(", "))
        rows = self._read(
            f"SELECT {columns} FROM outbox o JOIN jobs j ON j.id = o.job_id "
            "WHERE j.state = ? AND j.held_at IS NULL AND o.state = 'PENDING' "
            "AND COALESCE(o.next_attempt_at, 0) <= ? ORDER BY o.job_id, o.destination, o.id",
            (str(JobState.EXPORTING), now),
        )
        return [_outbox_item(row) for row in rows]

    def record_delivery(
        self,
        item_ids: list[int],
        state: str,
        error: str | None = None,
        next_attempt_at: float | None = None,
        *,
        attempted: bool = True,
    ) -> None:
        """Record one attempt of a group of deliveries: DELIVERED, PENDING
        (retry at ``next_attempt_at``) or DEAD. Attempts count once per call,
        unless ``attempted`` is false (nothing was sent: a notification held
        back because the objects it names did not arrive)."""
        if state not in ("DELIVERED", "PENDING", "DEAD"):
            raise ValueError(f"unknown delivery state {state!r}")
        now = self._now()
        step = 1 if attempted else 0
        with self._write() as cur:
            cur.executemany(
                "UPDATE outbox SET state = ?, attempts = attempts + ?, last_error = ?, "
                "next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'PENDING'",
                [(state, step, error, next_attempt_at, now, item_id) for item_id in item_ids],
            )

    def settle_exports(self) -> list[Run]:
        """EXPORTING runs with nothing PENDING: all DELIVERED → DONE, else → DEAD
        with the first delivery error. Return the runs that moved."""
        now = self._now()
        moved: list[int] = []
        with self._write() as cur:
            rows = cur.execute(
                "SELECT j.id, SUM(CASE WHEN o.state = 'PENDING' THEN 1 ELSE 0 END) AS pending, "
                "SUM(CASE WHEN o.state = 'DEAD' THEN 1 ELSE 0 END) AS dead, "
                "MIN(CASE WHEN o.state = 'DEAD' THEN o.destination || ': ' || o.last_error END) "
                "AS error FROM jobs j LEFT JOIN outbox o ON o.job_id = j.id "
                "WHERE j.state = ? GROUP BY j.id",
                (str(JobState.EXPORTING),),
            ).fetchall()
            for row in rows:
                if row["pending"]:
                    continue
                target = JobState.DEAD if row["dead"] else JobState.DONE
                reason = f"delivery failed: {row['error']}" if row["dead"] else "delivered"
                cur.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                    (str(target), now, reason, row["id"]),
                )
                self._add_transition(cur, row["id"], JobState.EXPORTING, target, now, reason)
                moved.append(int(row["id"]))
        return [self.get_run(job_id) for job_id in moved]

    def hold(self, job_id: int, reason: str) -> Run:
        """Stop an EXPORTING run from being delivered (→ DEAD, rows DEAD)."""
        now = self._now()
        with self._write() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'DEAD', last_error = ?, updated_at = ? "
                "WHERE job_id = ? AND state = 'PENDING'",
                (reason, now, job_id),
            )
            row = _job_row(cur, job_id, "state")
            current = JobState(row["state"])
            check_transition(current, JobState.DEAD)
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (str(JobState.DEAD), now, reason, job_id),
            )
            self._add_transition(cur, job_id, current, JobState.DEAD, now, reason)
        return self.get_run(job_id)

    def requeue_orphans(self, reason: str, claimant: str | None = None) -> list[int]:
        """Runs left RUNNING by a stopped node become FAILED_RETRYABLE, due now.

        Those the node claimed under the name ``claimant`` and those claimed
        without a name (by earlier releases); without ``claimant``, every run
        claimed without a lease. Runs of other nodes sharing the store, and
        runs leased by workers (their leases expire instead), stay RUNNING.
        """
        now = self._now()
        with self._write() as cur:
            mine = "" if claimant is None else " AND (claimed_by IS NULL OR claimed_by = ?)"
            rows = cur.execute(
                "SELECT id FROM jobs WHERE kind = 'run' AND state = ? "
                f"AND lease_until IS NULL{mine}",
                (str(JobState.RUNNING), *([] if claimant is None else [claimant])),
            ).fetchall()
            for row in rows:
                cur.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, next_attempt_at = ? "
                    "WHERE id = ?",
                    (str(JobState.FAILED_RETRYABLE), now, reason, now, row["id"]),
                )
                self._add_transition(
                    cur, row["id"], JobState.RUNNING, JobState.FAILED_RETRYABLE, now, reason
                )
        return [int(row["id"]) for row in rows]

    def replay(self, job_id: int, *, only_failed: bool = False) -> Run:
        """Deliver a finished run's results again: its outbox rows (only the
        DEAD ones with ``only_failed``) go back to PENDING with attempts reset,
        and the run back to RESULTS_WRITTEN for the export stage.

        Raises
        ------
        PurgedError
            Retention removed the run's results.
        IllegalTransitionError
            The run is not DONE or DEAD, or never wrote results.
        """
        now = self._now()
        with self._write() as cur:
            row = _job_row(cur, job_id, "state, kind, result_dir, purged_at", live=True)
            current = JobState(row["state"])
            if row["kind"] != "run" or row["result_dir"] is None:
                raise IllegalTransitionError(f"job {job_id} has no results to deliver")
            if current not in (JobState.DONE, JobState.DEAD):
                raise IllegalTransitionError(
                    f"job {job_id} is {current}: only DONE or DEAD runs can be replayed"
                )
            which = "AND state = 'DEAD'" if only_failed else ""
            cur.execute(
                "UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_at = NULL, "
                f"last_error = NULL, updated_at = ? WHERE job_id = ? {which}",
                (now, job_id),
            )
            reason = "delivery replayed by hand" + (" (failed deliveries)" if only_failed else "")
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (str(JobState.RESULTS_WRITTEN), now, reason, job_id),
            )
            self._add_transition(cur, job_id, current, JobState.RESULTS_WRITTEN, now, reason)
        return self.get_run(job_id)

    def retry(self, job_id: int) -> Run:
        """A hand retry. A run that failed while delivering has its failed
        deliveries replayed (see :meth:`replay`); a run that failed before
        goes back to ROUTED with its attempts reset, and so does one whose
        failed notification holds no message (queued by a release before
        schema version 4): running it again builds the message.

        Raises
        ------
        PurgedError
            Retention removed the run's inputs and results.
        IllegalTransitionError
            The job is not a run, or not DEAD / FAILED_RETRYABLE.
        """
        now = self._now()
        failed_delivery = self._read(
            "SELECT 1 FROM jobs j WHERE j.id = ? AND j.state = ? AND j.result_dir IS NOT NULL "
            "AND j.purged_at IS NULL "
            "AND EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.state = 'DEAD') "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.state = 'DEAD' "
            "AND o.kind = 'notification' AND o.body IS NULL)",
            (job_id, str(JobState.DEAD)),
        )
        if failed_delivery:
            return self.replay(job_id, only_failed=True)
        with self._write() as cur:
            row = _job_row(cur, job_id, "state, kind, purged_at", live=True)
            current = JobState(row["state"])
            if row["kind"] != "run" or current not in (JobState.DEAD, JobState.FAILED_RETRYABLE):
                raise IllegalTransitionError(
                    f"job {job_id} is a {row['kind']} job in {current}: only DEAD or "
                    "FAILED_RETRYABLE pipeline runs can be retried"
                )
            reason = "retried by hand"
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, attempts = 0, "
                "next_attempt_at = NULL WHERE id = ?",
                (str(JobState.ROUTED), now, reason, job_id),
            )
            self._add_transition(cur, job_id, current, JobState.ROUTED, now, reason)
        return self.get_run(job_id)

    # -- retention -------------------------------------------------------

    #: Studies with jobs not yet purged, all of them final, no delivery
    #: pending, and the time of their latest activity: the latest transition
    #: or update of any of their jobs, or the latest instance received.
    _EXPIRED = (
        "WITH live AS (SELECT study_instance_uid AS uid FROM jobs WHERE purged_at IS NULL "
        " GROUP BY study_instance_uid HAVING SUM(CASE WHEN state NOT IN ({final}) "
        "  AND NOT (kind = 'study' AND state IN ({final_round})) THEN 1 ELSE 0 END) = 0), "
        "activity AS (SELECT l.uid, GREATEST("
        " (SELECT MAX(GREATEST(j.updated_at, j.last_instance_at)) FROM jobs j "
        "  WHERE j.study_instance_uid = l.uid), "
        " COALESCE((SELECT MAX(t.at) FROM transitions t JOIN jobs j ON j.id = t.job_id "
        "  WHERE j.study_instance_uid = l.uid), 0), "
        " COALESCE((SELECT MAX(i.received_at) FROM instances i "
        "  WHERE i.study_instance_uid = l.uid), 0)) AS last_at "
        " FROM live l WHERE NOT EXISTS (SELECT 1 FROM outbox o JOIN jobs j ON j.id = o.job_id "
        "  WHERE j.study_instance_uid = l.uid AND j.purged_at IS NULL "
        "  AND o.state = 'PENDING') {only}) "
        "SELECT uid, last_at FROM activity WHERE last_at < ? ORDER BY last_at, uid"
    )

    def _expired(
        self, cur: _Cursor, cutoff: float, study_instance_uid: str | None = None
    ) -> list[str]:
        final = tuple(str(state) for state in FINAL_STATES)
        final_round = tuple(str(state) for state in FINAL_ROUND_STATES)
        only = "" if study_instance_uid is None else "AND l.uid = ?"
        params: tuple[object, ...] = (*final, *final_round)
        if study_instance_uid is not None:
            params += (study_instance_uid,)
        sql = self._EXPIRED.format(final=_marks(final), final_round=_marks(final_round), only=only)
        rows = cur.execute(sql, (*params, cutoff)).fetchall()
        return [str(row["uid"]) for row in rows]

    def expired_studies(self, cutoff: float) -> list[str]:
        """Studies whose finished work retention may purge, oldest activity first.

        A study qualifies when it has jobs not purged yet, every one of them is
        DONE, DISCARDED or DEAD (or, for an assembly round, ROUTED: its runs
        are jobs of their own), none has a delivery PENDING, and its latest
        activity (a transition of any of its jobs, an instance received) is
        before ``cutoff``.

        Parameters
        ----------
        cutoff : float
            Seconds since the epoch: now minus the retention period.

        Returns
        -------
        list of str
            Study Instance UIDs.
        """
        with self._snapshot() as cur:
            return self._expired(cur, cutoff)

    def purge_plan(self, study_instance_uid: str, cutoff: float) -> PurgePlan | None:
        """What retention removes of one study (step one of a purge).

        Read in one snapshot: the study's jobs not purged yet, the files of
        their instance rows and of their runs' result objects, and the runs'
        result and outbox folders.

        Parameters
        ----------
        study_instance_uid : str
            The study.
        cutoff : float
            As for :meth:`expired_studies`, checked again here.

        Returns
        -------
        PurgePlan or None
            ``None`` when the study does not qualify (any more).
        """
        with self._snapshot() as cur:
            if not self._expired(cur, cutoff, study_instance_uid):
                return None
            jobs = [
                _job(row)
                for row in cur.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE study_instance_uid = ? "
                    "AND purged_at IS NULL ORDER BY id",
                    (study_instance_uid,),
                ).fetchall()
            ]
            ids = [job.id for job in jobs]
            instances = cur.execute(
                f"SELECT path FROM instances WHERE job_id IN ({_marks(ids)}) ORDER BY path",
                ids,
            ).fetchall()
            objects = cur.execute(
                f"SELECT DISTINCT path FROM outbox WHERE job_id IN ({_marks(ids)}) "
                "AND kind = 'dicom' ORDER BY path",
                ids,
            ).fetchall()
        folders = dict.fromkeys(
            folder
            for job in jobs
            if isinstance(job, Run)
            for folder in (job.result_dir, job.outbox_dir)
            if folder
        )
        return PurgePlan(
            study_instance_uid=study_instance_uid,
            jobs=tuple(jobs),
            files=tuple(str(row["path"]) for row in [*instances, *objects]),
            folders=tuple(folders),
        )

    def mark_purged(self, plan: PurgePlan, now: float) -> int | None:
        """Record a purge whose files are gone (the last step of a purge).

        In one transaction: check that every job of the plan is still in the
        state, and at the ``updated_at``, the plan saw and has no delivery
        PENDING; delete the instance rows of those jobs (a later copy of the
        same SOP Instance UID is then new data); set their ``purged_at``. The
        jobs and their transitions are kept.

        Parameters
        ----------
        plan : PurgePlan
            From :meth:`purge_plan`.
        now : float
            The time recorded as ``purged_at``.

        Returns
        -------
        int or None
            How many instance rows were deleted, or ``None`` when a job moved
            on meanwhile and nothing was recorded.
        """
        ids = [job.id for job in plan.jobs]
        seen = {job.id: (str(job.state), job.updated_at) for job in plan.jobs}
        with self._write() as cur:
            rows = cur.execute(
                f"SELECT id, state, updated_at, purged_at FROM jobs WHERE id IN ({_marks(ids)})",
                ids,
            ).fetchall()
            current = {row["id"]: (row["state"], row["updated_at"]) for row in rows}
            pending = cur.execute(
                f"SELECT 1 FROM outbox WHERE job_id IN ({_marks(ids)}) AND state = 'PENDING'",
                ids,
            ).fetchone()
            if current != seen or pending is not None:
                return None
            if any(row["purged_at"] is not None for row in rows):
                return None
            deleted = cur.execute(
                f"DELETE FROM instances WHERE job_id IN ({_marks(ids)})", ids
            ).rowcount
            cur.execute(f"UPDATE jobs SET purged_at = ? WHERE id IN ({_marks(ids)})", (now, *ids))
            self._insert_audit(
                cur,
                now,
                AuditEntry(
                    AuditEvent.RETENTION_PURGE,
                    "node",
                    action="purge",
                    target=plan.study_instance_uid,
                    study_instance_uid=plan.study_instance_uid,
                    detail={
                        "jobs": ids,
                        "instances": int(deleted),
                        "files": len(plan.files),
                    },
                ),
            )
        return int(deleted)

    def record_descriptors(self, job_id: int, pipeline: str, document: str) -> None:
        """Keep a run's descriptors (a JSON document) for drift checks (schema
        version 5), stamped with the current time.

        Parameters
        ----------
        job_id : int
            The run they describe.
        pipeline : str
            The pipeline that ran.
        document : str
            JSON text.
        """
        with self._write() as cur:
            cur.execute(
                "INSERT INTO descriptors (job_id, pipeline, at, json) VALUES (?, ?, ?, ?)",
                (job_id, pipeline, self._now(), document),
            )

    def state_counts(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each state, by kind (``study`` or ``run``).

        Returns
        -------
        dict of (kind, state) to int
            Only the pairs that have jobs.
        """
        rows = self._read("SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state")
        return {(str(r["kind"]), str(r["state"])): int(r["n"]) for r in rows}

    def descriptor_pipelines(self) -> list[str]:
        """The pipelines that have recorded descriptors, by name."""
        rows = self._read("SELECT DISTINCT pipeline FROM descriptors ORDER BY pipeline")
        return [str(r["pipeline"]) for r in rows]

    def descriptors(
        self,
        pipeline: str,
        *,
        first: int | None = None,
        last: int | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int = 0,
    ) -> list[tuple[int, int, float, str]]:
        """Recorded descriptors of ``pipeline``, oldest first.

        Parameters
        ----------
        pipeline : str
            Whose runs.
        first, last : int, optional
            Only the oldest / newest this many rows.
        since, until : float, optional
            Only rows recorded at or after / before these times (epoch seconds).
        after_id : int
            Only rows after this row id.

        Returns
        -------
        list of (row id, job id, recorded at, JSON text)
        """
        sql = "SELECT id, job_id, at, json FROM descriptors WHERE pipeline = ? AND id > ?"
        params: list[object] = [pipeline, after_id]
        if since is not None:
            sql += " AND at >= ?"
            params.append(since)
        if until is not None:
            sql += " AND at < ?"
            params.append(until)
        if last is not None:
            sql = (
                f"SELECT * FROM ({sql} ORDER BY at DESC, id DESC LIMIT ?) AS recent ORDER BY at, id"
            )
            params.append(last)
        else:
            sql += " ORDER BY at, id"
            if first is not None:
                sql += " LIMIT ?"
                params.append(first)
        rows = self._read(sql, tuple(params))
        return [(int(r["id"]), int(r["job_id"]), float(r["at"]), str(r["json"])) for r in rows]

    # -- shadow mode, corrections, promotions (schema version 6) ----------

    def shadow_pairs(self) -> list[tuple[Run, Run]]:
        """Shadow runs with results whose agreement is not recorded yet, each
        with its production run (same round, rule and series) once that has
        results too, oldest first.

        Returns
        -------
        list of (production Job, shadow Job)
        """
        rows = self._read(
            "SELECT p.id AS production, s.id AS shadow FROM jobs s JOIN jobs p "
            "ON p.parent_id = s.parent_id AND p.rule = s.rule AND p.kind = 'run' "
            "AND p.shadow = 0 AND p.series_instance_uid IS NOT DISTINCT FROM s.series_instance_uid "
            "WHERE s.kind = 'run' AND s.shadow = 1 AND s.result_dir IS NOT NULL "
            "AND p.result_dir IS NOT NULL AND s.purged_at IS NULL AND p.purged_at IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM shadow_agreement a WHERE a.shadow_job_id = s.id) "
            "ORDER BY s.id"
        )
        return [(self.get_run(r["production"]), self.get_run(r["shadow"])) for r in rows]

    def record_agreement(self, production: Run, shadow: Run, document: str) -> None:
        """Keep the agreement of a shadow run with its production run (JSON);
        a second record for the same shadow run is ignored."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO shadow_agreement (rule, production_pipeline, "
                "candidate_pipeline, production_job_id, shadow_job_id, study_instance_uid, at, "
                "json) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    shadow.rule or "",
                    production.pipeline,
                    shadow.pipeline,
                    production.id,
                    shadow.id,
                    shadow.study_instance_uid,
                    self._now(),
                    document,
                ),
            )

    def agreements(self, rule: str | None = None) -> list[dict[str, object]]:
        """Recorded agreements (oldest first), each a dict of the row's columns."""
        where, params = ("WHERE rule = ?", (rule,)) if rule is not None else ("", ())
        rows = self._read(f"SELECT * FROM shadow_agreement {where} ORDER BY id", params)
        return [dict(row) for row in rows]

    def record_promotion(
        self,
        rule: str,
        from_pipeline: str,
        to_pipeline: str,
        config_path: str,
        backup_path: str,
        by_user: str,
        agreement: str,
    ) -> int:
        """Record that ``rule``'s candidate was promoted; return the row id."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO promotions (at, rule, from_pipeline, to_pipeline, config_path, "
                "backup_path, by_user, agreement) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    self._now(),
                    rule,
                    from_pipeline,
                    to_pipeline,
                    config_path,
                    backup_path,
                    by_user,
                    agreement,
                ),
            )
            return _returned_id(cur)

    def promotions(self) -> list[dict[str, object]]:
        """Every recorded promotion, oldest first (dicts of the row's columns)."""
        return [dict(row) for row in self._read("SELECT * FROM promotions ORDER BY id")]

    def written_segmentations(
        self, sop_instance_uids: Sequence[str], series_instance_uids: Sequence[str]
    ) -> list[dict[str, object]]:
        """SEGs the node wrote (its outbox) with one of these SOP Instance UIDs
        or in one of these series, newest run first.

        Returns
        -------
        list of dict
            ``job_id``, ``pipeline``, ``source_series`` (the run's input
            series), ``sop_instance_uid``, ``series_instance_uid``, ``path``.
        """
        sops, series = list(sop_instance_uids), list(series_instance_uids)
        if not sops and not series:
            return []
        rows = self._read(
            "SELECT DISTINCT o.job_id, j.pipeline, j.series_instance_uid AS source_series, "
            "o.sop_instance_uid, o.series_instance_uid, o.path FROM outbox o "
            "JOIN jobs j ON j.id = o.job_id WHERE o.kind = 'dicom' "
            "AND o.sop_class_uid = '1.2.840.10008.5.1.4.1.1.66.4' "
            f"AND (o.sop_instance_uid IN ({_marks(sops) or 'NULL'}) "
            f"OR o.series_instance_uid IN ({_marks(series) or 'NULL'})) ORDER BY o.job_id DESC",
            (*sops, *series),
        )
        return [dict(row) for row in rows]

    def record_correction(
        self,
        *,
        sop_instance_uid: str,
        series_instance_uid: str,
        study_instance_uid: str,
        path: str,
        round_job_id: int,
        job_id: int,
        pipeline: str,
        seg_sop_instance_uid: str,
        seg_path: str,
        matched_by: str,
    ) -> bool:
        """Record a received SEG that corrects one the node wrote (PENDING
        scoring); return whether it was new."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO corrections (sop_instance_uid, series_instance_uid, "
                "study_instance_uid, path, round_job_id, job_id, pipeline, "
                "seg_sop_instance_uid, seg_path, matched_by, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    sop_instance_uid,
                    series_instance_uid,
                    study_instance_uid,
                    path,
                    round_job_id,
                    job_id,
                    pipeline,
                    seg_sop_instance_uid,
                    seg_path,
                    matched_by,
                    self._now(),
                ),
            )
            return cur.rowcount == 1

    def corrections(self, *, pending: bool = False) -> list[dict[str, object]]:
        """Recorded corrections, oldest first (only PENDING ones with ``pending``)."""
        where = "WHERE state = 'PENDING'" if pending else ""
        return [dict(r) for r in self._read(f"SELECT * FROM corrections {where} ORDER BY id")]

    def score_correction(
        self, correction_id: int, state: str, scores: str | None, reason: str | None
    ) -> None:
        """Record a correction's scores (``SCORED``) or why it has none (``FAILED``)."""
        if state not in ("SCORED", "FAILED"):
            raise ValueError(f"unknown correction state {state!r}")
        with self._write() as cur:
            cur.execute(
                "UPDATE corrections SET state = ?, scores = ?, reason = ?, scored_at = ? "
                "WHERE id = ?",
                (state, scores, reason, self._now(), correction_id),
            )

    # -- holds and discards (admin) --------------------------------------

    def hold_job(self, job_id: int, actor: str) -> Job:
        """Hold a job: it is not routed, run or delivered until released.

        Raises
        ------
        NotFoundError
            No such job.
        IllegalTransitionError
            It is already held, purged, or in a state with nothing to hold
            (see :func:`~dicomnode.jobs.states.check_hold`).
        """
        now = self._now()
        with self._write() as cur:
            row = _job_row(cur, job_id, "state, held_at, purged_at", live=True)
            if row["held_at"] is not None:
                raise IllegalTransitionError(f"job {job_id} is already held")
            check_hold(job_id, JobState(row["state"]))
            cur.execute(
                "UPDATE jobs SET held_at = ?, held_by = ?, updated_at = ? WHERE id = ?",
                (now, actor, now, job_id),
            )
        return self.get_job(job_id)

    def release_job(self, job_id: int) -> Job:
        """Release a held job: the stages take it up again where it stood.

        Raises
        ------
        NotFoundError
            No such job.
        IllegalTransitionError
            It is not held.
        """
        now = self._now()
        with self._write() as cur:
            row = _job_row(cur, job_id, "held_at")
            if row["held_at"] is None:
                raise IllegalTransitionError(f"job {job_id} is not held")
            cur.execute(
                "UPDATE jobs SET held_at = NULL, held_by = NULL, updated_at = ? WHERE id = ?",
                (now, job_id),
            )
        return self.get_job(job_id)

    def discard_job(self, job_id: int, reason: str) -> Job:
        """Give up a DEAD or held job for good: → DISCARDED, its undelivered
        outbox rows DEAD with ``reason`` (retention later purges it).

        Raises
        ------
        NotFoundError
            No such job.
        IllegalTransitionError
            Discarding it would lose work (see :func:`~dicomnode.jobs.states.check_discard`).
        """
        now = self._now()
        with self._write() as cur:
            row = _job_row(cur, job_id, "state, held_at")
            current = JobState(row["state"])
            check_discard(job_id, current, held=row["held_at"] is not None)
            cur.execute(
                "UPDATE outbox SET state = 'DEAD', last_error = ?, updated_at = ? "
                "WHERE job_id = ? AND state = 'PENDING'",
                (reason, now, job_id),
            )
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, held_at = NULL, "
                "held_by = NULL, next_attempt_at = NULL WHERE id = ?",
                (str(JobState.DISCARDED), now, reason, job_id),
            )
            self._add_transition(cur, job_id, current, JobState.DISCARDED, now, reason)
        return self.get_job(job_id)

    # -- audit trail -----------------------------------------------------

    @staticmethod
    def _insert_audit(cur: _Cursor, at: float, entry: AuditEntry) -> int:
        cur.execute(
            f"INSERT INTO audit ({_AUDIT_COLUMNS.removeprefix('id, ')}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                at,
                str(entry.event),
                entry.actor,
                entry.action,
                entry.target,
                entry.outcome,
                entry.study_instance_uid,
                entry.patient_id,
                entry.patient_name,
                entry.accession_number,
                entry.address,
                json.dumps(entry.detail, sort_keys=True, default=str),
            ),
        )
        return _returned_id(cur)

    def record_audit(self, entry: AuditEntry) -> int:
        """Append one event to the audit trail; return its row id."""
        now = self._now()
        with self._write() as cur:
            return self._insert_audit(cur, now, entry)

    def record_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Append several events in one transaction."""
        now = self._now()
        with self._write() as cur:
            for entry in entries:
                self._insert_audit(cur, now, entry)

    def audit_records(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        event: str | None = None,
        actor: str | None = None,
        study_instance_uid: str | None = None,
        patient_id: str | None = None,
        accession_number: str | None = None,
        limit: int | None = None,
        oldest_first: bool = False,
    ) -> list[AuditRecord]:
        """Audit rows matching every filter given, newest first (or oldest first)."""
        clauses: list[str] = []
        params: list[object] = []
        for column, value, op in (
            ("at", since, ">="),
            ("at", until, "<"),
            ("id", after_id, ">"),
            ("event", event, "="),
            ("actor", actor, "="),
            ("study_instance_uid", study_instance_uid, "="),
            ("patient_id", patient_id, "="),
            ("accession_number", accession_number, "="),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if oldest_first else "DESC"
        bound = ""
        if limit is not None:
            bound = "LIMIT ?"
            params.append(limit)
        rows = self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {where} ORDER BY id {order} {bound}",
            tuple(params),
        )
        return [
            AuditRecord(
                id=row["id"],
                at=row["at"],
                entry=AuditEntry(
                    event=AuditEvent(row["event"]),
                    actor=row["actor"],
                    action=row["action"],
                    target=row["target"],
                    outcome=row["outcome"],
                    study_instance_uid=row["study_instance_uid"],
                    patient_id=row["patient_id"],
                    patient_name=row["patient_name"],
                    accession_number=row["accession_number"],
                    address=row["address"],
                    detail=json.loads(row["detail"]),
                ),
            )
            for row in rows
        ]

    def last_audit_id(self) -> int:
        """The id of the newest audit row (0 when there is none)."""
        rows = self._read("SELECT COALESCE(MAX(id), 0) AS last FROM audit")
        return int(rows[0]["last"])

    def close(self) -> None:
        """See :meth:`dicomnode.jobs.store.JobStore.close`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._engine.dispose()


#: The store's name in earlier releases, when it spoke SQLite only.
SQLiteJobStore = SQLJobStore
