"""Datasets and their versions."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("create_time", sa.Double, nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("dataset_name", sa.Text, sa.ForeignKey("datasets.name"), nullable=False),
        sa.Column("content_digest", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("train_samples", sa.Integer, nullable=False),
        sa.Column("validation_samples", sa.Integer, nullable=False),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("skipped_records", sa.Integer, nullable=False),
        sa.Column("train_digest", sa.Text, nullable=False),
        sa.Column("train_bytes", sa.BigInteger, nullable=False),
        sa.Column("validation_digest", sa.Text, nullable=False),
        sa.Column("validation_bytes", sa.BigInteger, nullable=False),
        sa.Column("source_digest", sa.Text, nullable=False),
        sa.Column("source_bytes", sa.BigInteger, nullable=False),
        sa.Column("source_file_name", sa.Text, nullable=False),
        sa.Column("create_time", sa.Double, nullable=False),
    )
    op.create_index(
        "dataset_versions_by_dataset", "dataset_versions", ["dataset_name", "create_time"]
    )


def downgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
