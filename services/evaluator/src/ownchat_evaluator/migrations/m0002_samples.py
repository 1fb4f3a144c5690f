"""Run configurations, timings and devices, and the per-sample outputs of runs."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("eval_runs", sa.Column("config", sa.Text, nullable=False, server_default=""))
    op.add_column(
        "eval_runs", sa.Column("repeated_from", sa.Text, nullable=False, server_default="")
    )
    op.add_column("eval_runs", sa.Column("start_time", sa.Double))
    op.add_column("eval_runs", sa.Column("end_time", sa.Double))
    op.add_column("eval_runs", sa.Column("device", sa.Text, nullable=False, server_default=""))
    op.add_column("eval_runs", sa.Column("timings", sa.Text, nullable=False, server_default="{}"))
    op.create_index("eval_runs_by_model", "eval_runs", ["model_id", "create_time"])
    op.create_table(
        "eval_samples",
        sa.Column(
            "run_id",
            sa.Text,
            sa.ForeignKey("eval_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("reply", sa.Text),
        sa.Column("reply_tokens", sa.Integer, nullable=False),
        sa.Column("nll", sa.Double, nullable=False),
        sa.Column("scored_tokens", sa.Integer, nullable=False),
        sa.Column("refused", sa.Integer),
        sa.Column("check_passed", sa.Integer),
        sa.Column("expected", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "idx"),
    )


def downgrade() -> None:
    op.drop_table("eval_samples")
    op.drop_index("eval_runs_by_model", "eval_runs")
    for column in ("timings", "device", "end_time", "start_time", "repeated_from", "config"):
        op.drop_column("eval_runs", column)
