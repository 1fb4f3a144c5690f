"""Canaries (the share of the traffic a deployment was made with), engine
restarts, and the base model's files of a LoRA adapter."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column(
        "deployments",
        sa.Column("canary_percent", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "deployments",
        sa.Column("restarts", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "deployments", sa.Column("base_digest", sa.Text, nullable=False, server_default="")
    )


def downgrade() -> None:
    op.drop_column("deployments", "base_digest")
    op.drop_column("deployments", "restarts")
    op.drop_column("deployments", "canary_percent")
