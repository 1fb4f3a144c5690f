"""The capture settings an operator set at run time (one row; none until first set)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "capture_settings",
        # Always 1: the gateway has one set of settings.
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("sample_percent", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Double, nullable=False),
        sa.Column("updated_by", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("capture_settings")
