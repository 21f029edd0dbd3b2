"""serve run generations and replacement candidates

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("candidate_run_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_backend_url", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_checkpoint_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("candidate_config_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        for name in ("candidate_config_json", "candidate_checkpoint_id", "candidate_backend_url",
                     "candidate_run_id", "generation"):
            batch.drop_column(name)
