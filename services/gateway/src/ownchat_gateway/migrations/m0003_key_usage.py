"""The rate limits' counters: each key's buckets and its day's tokens.

Files from before this revision already have the table (the counters created it
themselves when they opened), so it is created only where it is missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("key_usage"):
        return
    op.create_table(
        "key_usage",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("requests", sa.Double, nullable=False),
        sa.Column("tokens", sa.Double, nullable=False),
        sa.Column("updated", sa.Double, nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("day_tokens", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_usage")
