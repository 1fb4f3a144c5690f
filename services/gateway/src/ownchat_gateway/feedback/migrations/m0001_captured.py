"""Captured chats (scrubbed) and the thumbs on their replies."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "captured_chats",
        sa.Column("response_id", sa.Text, primary_key=True),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("messages", sa.Text, nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("review_item_id", sa.Text, nullable=False, server_default=""),
        sa.Column("create_time", sa.Double, nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.Text, nullable=False),
        sa.Column("rating", sa.Text, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("review_item_id", sa.Text, nullable=False, server_default=""),
        sa.Column("create_time", sa.Double, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("feedback_by_response", "feedback", ["response_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("captured_chats")
