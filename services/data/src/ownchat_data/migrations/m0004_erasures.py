"""Erasures and the versions they replaced."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column(
        "dataset_versions", sa.Column("erased_by", sa.Text, nullable=False, server_default="")
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("dataset_name", sa.Text, nullable=False),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.Column("value_sha256", sa.Text, nullable=False),
        sa.Column("source_records", sa.Text, nullable=False),
        sa.Column("removed_samples", sa.Integer, nullable=False),
        sa.Column("new_version_id", sa.Text, nullable=False),
        sa.Column("erased_version_ids", sa.Text, nullable=False),
        sa.Column("deleted_artifacts", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasures")
    op.drop_column("dataset_versions", "erased_by")
