"""accelerator exporter address and idle auto-stop

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("exporter_url", sa.String(), nullable=True))
        batch.add_column(sa.Column("idle_stop_minutes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("idle_stop_minutes")
        batch.drop_column("exporter_url")
