"""Token counts and length histograms with the base model's tokenizer."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column(
        "dataset_versions", sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0")
    )
    op.add_column(
        "dataset_versions", sa.Column("tokenizer", sa.Text, nullable=False, server_default="")
    )
    op.add_column(
        "dataset_versions",
        sa.Column("length_histogram", sa.Text, nullable=False, server_default="[]"),
    )


def downgrade() -> None:
    for column in ("length_histogram", "tokenizer", "tokens"):
        op.drop_column("dataset_versions", column)
