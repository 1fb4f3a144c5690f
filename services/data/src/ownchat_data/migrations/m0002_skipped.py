"""The records an upload skipped, with why."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column(
        "dataset_versions", sa.Column("skipped", sa.Text, nullable=False, server_default="[]")
    )


def downgrade() -> None:
    op.drop_column("dataset_versions", "skipped")
