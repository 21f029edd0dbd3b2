"""autoscaling: target load per replica, scale-down cooldown, the autoscaler's memory; the
instance and serving settings each serve run ran with (cost from engine spans, kept after the
endpoint is removed; an update's candidate differs from the live run)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("scale_target", sa.Float(), nullable=False, server_default="4"))
        batch.add_column(sa.Column("scale_down_after_s", sa.Integer(), nullable=False, server_default="300"))
        batch.add_column(sa.Column("replicas_wanted", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("scale_over_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("scale_under_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("scale_changed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("serve_runs") as batch:
        batch.add_column(sa.Column("instance", sa.String(), nullable=True))
        batch.add_column(sa.Column("max_context", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("precision", sa.String(), nullable=True))
    for column in ("instance", "max_context", "precision"):
        op.execute(f"UPDATE serve_runs SET {column} = (SELECT endpoints.{column} FROM endpoints "
                   "WHERE endpoints.id = serve_runs.endpoint_id)")


def downgrade() -> None:
    with op.batch_alter_table("serve_runs") as batch:
        for name in ("precision", "max_context", "instance"):
            batch.drop_column(name)
    with op.batch_alter_table("endpoints") as batch:
        for name in ("scale_changed_at", "scale_under_since", "scale_over_since", "replicas_wanted",
                     "scale_down_after_s", "scale_target"):
            batch.drop_column(name)
