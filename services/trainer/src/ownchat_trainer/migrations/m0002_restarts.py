"""Resuming after a worker died: consecutive restarts without progress, and the
checkpoint step of the last one."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("restarts", sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    op.add_column(
        "jobs", sa.Column("restart_step", sa.Integer, nullable=False, server_default=sa.text("-1"))
    )


def downgrade() -> None:
    op.drop_column("jobs", "restart_step")
    op.drop_column("jobs", "restarts")
