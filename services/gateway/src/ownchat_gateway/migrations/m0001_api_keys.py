"""API keys, stored hashed, with their request and daily token limits."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_sha256", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        # Limits are counts given by the operator, with no upper bound: 64 bits.
        sa.Column("requests_per_minute", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens_per_day", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.Column("revoke_time", sa.Double),
    )
    op.create_index("api_keys_by_create_time", "api_keys", ["create_time", "id"])


def downgrade() -> None:
    op.drop_table("api_keys")
