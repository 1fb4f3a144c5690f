"""The review queue: items, leases, skips, reviews and their exports."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("fingerprint", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("reply_a", sa.Text, nullable=False),
        sa.Column("reply_b", sa.Text, nullable=False),
        sa.Column("model_id_a", sa.Text, nullable=False),
        sa.Column("model_id_b", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column(
            "reviews_wanted",
            sa.Integer,
            sa.CheckConstraint("reviews_wanted >= 1"),
            nullable=False,
        ),
        sa.Column("reviews_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.CheckConstraint("reviews_done >= 0 AND reviews_done <= reviews_wanted"),
        sqlite_autoincrement=True,
    )
    waiting = "reviews_done < reviews_wanted"
    op.create_index(
        "review_items_waiting",
        "review_items",
        [sa.text("priority DESC"), "seq"],
        sqlite_where=sa.text(waiting),
        postgresql_where=sa.text(waiting),
    )
    op.create_table(
        "review_leases",
        sa.Column("item_id", sa.Text, sa.ForeignKey("review_items.id"), nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("expire_time", sa.Double, nullable=False),
        sa.Column("swapped", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("item_id", "reviewer"),
    )
    op.create_index("review_leases_by_reviewer", "review_leases", ["reviewer", "expire_time"])
    op.create_table(
        "review_skips",
        sa.Column("item_id", sa.Text, sa.ForeignKey("review_items.id"), nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("item_id", "reviewer"),
    )
    op.create_table(
        "reviews",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("item_id", sa.Text, sa.ForeignKey("review_items.id"), nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("rating", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tags", sa.Text, nullable=False, server_default="[]"),
        sa.Column("preferred_model_id", sa.Text, nullable=False, server_default=""),
        sa.Column("tie", sa.Integer, nullable=False, server_default="0"),
        sa.Column("correction", sa.Text, nullable=False, server_default=""),
        sa.Column("swapped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.UniqueConstraint("item_id", "reviewer"),
        sqlite_autoincrement=True,
    )
    op.create_index("reviews_by_reviewer", "reviews", ["reviewer", "seq"])
    op.create_table(
        "review_exports",
        sa.Column("review_id", sa.Text, sa.ForeignKey("reviews.id"), nullable=False),
        sa.Column("dataset_version_id", sa.Text, nullable=False),
        sa.Column("record", sa.Integer, nullable=False),
        sa.Column("export_time", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("review_id", "dataset_version_id"),
    )


def downgrade() -> None:
    for table in ("review_exports", "reviews", "review_skips", "review_leases", "review_items"):
        op.drop_table(table)
