"""serve runs as records; endpoint intents and run pointers

Revision ID: 0004
Revises: 0003
"""
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "serve_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("endpoint_id", sa.String(), nullable=False, index=True),
        sa.Column("org_id", sa.String(), nullable=False, index=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("purpose", sa.String(), nullable=False),
        sa.Column("checkpoint_id", sa.String(), nullable=False),
        sa.Column("serving_config_json", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=True),
        sa.Column("flow_run_id", sa.Text(), nullable=True, unique=True),
        sa.Column("backend_url", sa.String(), nullable=True),
        sa.Column("exporter_url", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("submitted_at", TS, nullable=True),
        sa.Column("engine_started_at", TS, nullable=True),
        sa.Column("health_ok_at", TS, nullable=True),
        sa.Column("ready_at", TS, nullable=True),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("probe_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("not_ready_message", sa.Text(), nullable=True),
        sa.Column("stop_requested_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.Column("end_message", sa.Text(), nullable=True),
        sa.UniqueConstraint("endpoint_id", "generation", name="uq_serve_run_generation"),
    )
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("desired", sa.Text(), nullable=False, server_default="serving"))
        batch.add_column(sa.Column("stop_reason", sa.String(), nullable=True))
        batch.add_column(sa.Column("stop_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("remove_requested", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("verdict", sa.String(), nullable=True))
        batch.add_column(sa.Column("verdict_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("live_run", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_run", sa.String(), nullable=True))
        batch.add_column(sa.Column("startup_timeout_s", sa.Integer(), nullable=True))
    _backfill()
    with op.batch_alter_table("endpoints") as batch:
        for name in ("candidate_config_json", "candidate_checkpoint_id", "candidate_backend_url",
                     "candidate_run_id"):
            batch.drop_column(name)


def _backfill() -> None:
    """Each existing endpoint's live serve run becomes a record; its status becomes intents."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, org_id, generation, checkpoint_id, serving_config_json, serve_run_id, backend_url,"
        " exporter_url, status, reason_code, reason_message, created_at, scheduled_at, loading_at,"
        " healthy_at, ended_at FROM endpoints")).mappings().all()
    for ep in rows:
        status = ep["status"]
        if status in ("stopping", "stopped"):
            conn.execute(sa.text("UPDATE endpoints SET desired='stopped', stop_reason=:r, stop_message=:m"
                                 " WHERE id=:id"),
                         {"r": ep["reason_code"] or "stopped_by_user", "m": ep["reason_message"],
                          "id": ep["id"]})
        elif status == "failed":
            conn.execute(sa.text("UPDATE endpoints SET verdict=:r, verdict_message=:m WHERE id=:id"),
                         {"r": ep["reason_code"] or "run_ended", "m": ep["reason_message"], "id": ep["id"]})
        if ep["serve_run_id"] is None:
            continue
        run_id = f"sr_{secrets.token_hex(6)}"
        final = status in ("stopped", "failed")
        conn.execute(sa.text(
            "INSERT INTO serve_runs (id, endpoint_id, org_id, generation, role, purpose, checkpoint_id,"
            " serving_config_json, flow_run_id, backend_url, exporter_url, created_at, submitted_at,"
            " engine_started_at, ready_at, probe_failures, ended_at, end_reason)"
            " VALUES (:id, :ep, :org, :gen, 'live', 'start', :ck, :cfg, :fr, :be, :ex, :created,"
            " :submitted, :started, :ready, 0, :ended, :reason)"),
            {"id": run_id, "ep": ep["id"], "org": ep["org_id"], "gen": ep["generation"] or 0,
             "ck": ep["checkpoint_id"], "cfg": ep["serving_config_json"], "fr": ep["serve_run_id"],
             "be": ep["backend_url"], "ex": ep["exporter_url"], "created": ep["created_at"],
             "submitted": ep["scheduled_at"], "started": ep["loading_at"], "ready": ep["healthy_at"],
             "ended": ep["ended_at"] if final else None, "reason": ep["reason_code"] if final else None})
        conn.execute(sa.text("UPDATE endpoints SET live_run=:r WHERE id=:id"), {"r": run_id, "id": ep["id"]})


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("candidate_run_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_backend_url", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_checkpoint_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_config_json", sa.Text(), nullable=True))
        for name in ("startup_timeout_s", "candidate_run", "live_run", "verdict_message", "verdict", "remove_requested",
                     "stop_message", "stop_reason", "desired"):
            batch.drop_column(name)
    op.drop_table("serve_runs")
