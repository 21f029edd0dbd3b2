"""replicas (counts, slots, ready addresses); serve runs queued for a full work pool; engine logs

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("min_replicas", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("max_replicas", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("backend_urls", sa.Text(), nullable=True))
    with op.batch_alter_table("serve_runs") as batch:
        batch.add_column(sa.Column("replica", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("queued_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("log_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("log_host", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("backend_urls")
        batch.drop_column("max_replicas")
        batch.drop_column("min_replicas")
    with op.batch_alter_table("serve_runs") as batch:
        batch.drop_column("replica")
        batch.drop_column("log_host")
        batch.drop_column("log_path")
        batch.drop_column("queued_message")
        batch.drop_column("queued_at")
