"""The deployment history."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("engine", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("deployed_by", sa.Text, nullable=False),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.Column("artifact_digest", sa.Text, nullable=False, server_default=""),
        sa.Column("live_time", sa.Double),
        sa.Column("end_time", sa.Double),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sqlite_autoincrement=True,
    )
    op.create_index("deployments_by_state", "deployments", ["state", "live_time"])


def downgrade() -> None:
    op.drop_table("deployments")
