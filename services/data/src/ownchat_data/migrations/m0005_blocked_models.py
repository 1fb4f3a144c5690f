"""The model versions an erasure blocked."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column("erasures", sa.Column("blocked_model_ids", sa.Text))


def downgrade() -> None:
    op.drop_column("erasures", "blocked_model_ids")
