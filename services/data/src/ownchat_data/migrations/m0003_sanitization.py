"""What sanitization replaced and removed."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column(
        "dataset_versions",
        sa.Column("sanitization", sa.Text, nullable=False, server_default="{}"),
    )


def downgrade() -> None:
    op.drop_column("dataset_versions", "sanitization")
