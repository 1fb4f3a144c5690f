"""A key's tokens-per-minute limit; existing keys keep 0, the gateway's default."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("tokens_per_minute", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("api_keys", "tokens_per_minute")
