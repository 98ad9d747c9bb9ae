"""The job store as the last release before migrations left it (schema version 8).

A SQLite file written by that release (or earlier) is upgraded in place by the
store's own legacy steps and then stamped with this revision; a new database,
SQLite or PostgreSQL, is created by it.

Revision ID: 0001_schema_8
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_schema_8"
down_revision = None
branch_labels = None
depends_on = None

#: Seconds since the epoch, as the store writes them.
TIME: sa.Double[float] = sa.Double()


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _json(name: str, default: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text, nullable=False, server_default=default)


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "jobs",
        _id(),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("study_instance_uid", sa.Text, nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("jobs.id")),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("calling_ae", sa.Text, nullable=False, server_default=""),
        sa.Column("opened_at", TIME, nullable=False),
        sa.Column("last_instance_at", TIME, nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("pipeline", sa.Text),
        sa.Column("series_instance_uid", sa.Text),
        sa.Column("rule", sa.Text),
        _json("destinations", "[]"),
        _json("notify", "[]"),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TIME),
        sa.Column("traceback", sa.Text),
        sa.Column("result_dir", sa.Text),
        sa.Column("outbox_dir", sa.Text),
        sa.Column("purged_at", TIME),
        sa.Column("result_status", sa.Text, nullable=False, server_default="preliminary"),
        sa.Column("notify_after", sa.Text, nullable=False, server_default="delivered"),
        sa.Column("shadow", sa.Integer, nullable=False, server_default="0"),
        sa.Column("out_of_range", sa.Text, nullable=False, server_default="flag"),
        sa.Column("claimed_by", sa.Text),
        sa.Column("lease_until", TIME),
        sa.Column("queued_at", TIME),
        sa.Column("held_at", TIME),
        sa.Column("held_by", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "jobs_study_round",
        "jobs",
        ["study_instance_uid", "round"],
        unique=True,
        sqlite_where=sa.text("kind = 'study'"),
        postgresql_where=sa.text("kind = 'study'"),
    )
    op.create_index("jobs_state", "jobs", ["state"])
    op.create_index("jobs_study", "jobs", ["study_instance_uid", "purged_at"])
    op.create_table(
        "transitions",
        _id(),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("from_state", sa.Text),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("reason", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("transitions_job", "transitions", ["job_id"])
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.Text, primary_key=True),
        sa.Column("series_instance_uid", sa.Text, nullable=False),
        sa.Column("study_instance_uid", sa.Text, nullable=False),
        sa.Column("sop_class_uid", sa.Text, nullable=False),
        sa.Column("transfer_syntax_uid", sa.Text, nullable=False),
        sa.Column("modality", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("calling_ae", sa.Text, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False, server_default="0"),
        sa.Column("conflicts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("instances_study", "instances", ["study_instance_uid"])
    op.create_index("instances_job", "instances", ["job_id"])
    op.create_table(
        "outbox",
        _id(),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TIME),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("sop_class_uid", sa.Text),
        sa.Column("sop_instance_uid", sa.Text),
        sa.Column("study_instance_uid", sa.Text),
        sa.Column("series_instance_uid", sa.Text),
        sa.Column("body", sa.Text),
        _json("refers_to", "[]"),
        sa.UniqueConstraint("job_id", "destination", "path"),
        sqlite_autoincrement=True,
    )
    op.create_index("outbox_state", "outbox", ["state", "next_attempt_at"])
    op.create_table(
        "descriptors",
        _id(),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("pipeline", sa.Text, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("json", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("descriptors_pipeline", "descriptors", ["pipeline", "at"])
    op.create_table(
        "shadow_agreement",
        _id(),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("production_pipeline", sa.Text, nullable=False),
        sa.Column("candidate_pipeline", sa.Text, nullable=False),
        sa.Column("production_job_id", sa.Integer, nullable=False),
        sa.Column("shadow_job_id", sa.Integer, nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.Text, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("json", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "shadow_agreement_pair",
        "shadow_agreement",
        ["rule", "production_pipeline", "candidate_pipeline"],
    )
    op.create_table(
        "corrections",
        _id(),
        sa.Column("sop_instance_uid", sa.Text, nullable=False, unique=True),
        sa.Column("series_instance_uid", sa.Text, nullable=False),
        sa.Column("study_instance_uid", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("round_job_id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("pipeline", sa.Text, nullable=False),
        sa.Column("seg_sop_instance_uid", sa.Text, nullable=False),
        sa.Column("seg_path", sa.Text, nullable=False),
        sa.Column("matched_by", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="PENDING"),
        sa.Column("scores", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("scored_at", TIME),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "promotions",
        _id(),
        sa.Column("at", TIME, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("from_pipeline", sa.Text, nullable=False),
        sa.Column("to_pipeline", sa.Text, nullable=False),
        sa.Column("config_path", sa.Text, nullable=False),
        sa.Column("backup_path", sa.Text, nullable=False),
        sa.Column("by_user", sa.Text, nullable=False),
        sa.Column("agreement", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit",
        _id(),
        sa.Column("at", TIME, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False, server_default=""),
        sa.Column("target", sa.Text, nullable=False, server_default=""),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("study_instance_uid", sa.Text),
        sa.Column("patient_id", sa.Text),
        sa.Column("patient_name", sa.Text),
        sa.Column("accession_number", sa.Text),
        sa.Column("address", sa.Text),
        _json("detail", "{}"),
        sqlite_autoincrement=True,
    )
    for column in ("at", "study_instance_uid", "patient_id", "accession_number"):
        name = "study" if column == "study_instance_uid" else column.removesuffix("_number")
        op.create_index(f"audit_{name}", "audit", [column])
    _append_only_audit()


def _append_only_audit() -> None:
    """Triggers that refuse every UPDATE and DELETE of an audit row."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'the audit trail is append-only: rows cannot be %', "
            "CASE TG_OP WHEN 'UPDATE' THEN 'changed' ELSE 'deleted' END; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
        return
    for verb, what in (("UPDATE", "changed"), ("DELETE", "deleted")):
        op.execute(
            f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit BEGIN "
            f"SELECT RAISE(ABORT, 'the audit trail is append-only: rows cannot be {what}'); END"
        )


def downgrade() -> None:
    raise NotImplementedError("the job store is not downgraded: restore a backup instead")
