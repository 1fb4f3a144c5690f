"""The model registry, jobs, their events and their checkpoints."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("suffix", sa.Text, nullable=False),
        sa.Column("artifact_digest", sa.Text, nullable=False),
        sa.Column("artifact_bytes", sa.BigInteger, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("dataset_version_id", sa.Text, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("blocked_reason", sa.Text, nullable=False),
        sa.Column("create_time", sa.Double, nullable=False),
    )
    op.create_index("models_by_lineage", "models", ["base_model", "suffix"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("dataset_version_id", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("suffix", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("steps_done", sa.Integer, nullable=False),
        sa.Column("steps_total", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("train_digest", sa.Text, nullable=False),
        sa.Column("train_bytes", sa.BigInteger, nullable=False),
        sa.Column("validation_digest", sa.Text, nullable=False),
        sa.Column("validation_bytes", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.Column("update_time", sa.Double, nullable=False),
    )
    op.create_index("jobs_by_time", "jobs", ["create_time"])
    op.create_index("jobs_by_state", "jobs", ["state", "create_time"])
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("sequence", sa.Integer, primary_key=True),
        sa.Column("create_time", sa.Double, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("total_steps", sa.Integer, nullable=False),
        sa.Column("loss", sa.Double),
        sa.Column("validation_loss", sa.Double),
        sa.Column("learning_rate", sa.Double),
        sa.Column("tokens_per_second", sa.Double),
        sa.Column("eta_seconds", sa.Double),
    )
    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("loss", sa.Double),
        sa.Column("validation_loss", sa.Double),
        sa.Column("artifact_digest", sa.Text, nullable=False),
        sa.Column("artifact_bytes", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("job_events")
    op.drop_table("jobs")
    op.drop_table("models")
