"""Alembic's environment for every ownchat store (see ownchat.database).

Services migrate their stores when they open them, passing the connection and
the store's version table; run by hand (``alembic -c ...``) it connects to
``sqlalchemy.url`` itself.
"""

from __future__ import annotations

import sqlalchemy
from alembic import context

config = context.config


def _run(connection: sqlalchemy.Connection) -> None:
    context.configure(
        connection=connection,
        version_table=config.attributes.get("version_table", "alembic_version"),
        # SQLite alters tables by copying them; Alembic's batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = sqlalchemy.create_engine(
        config.get_main_option("sqlalchemy.url") or "", poolclass=sqlalchemy.pool.NullPool
    )
    with engine.connect() as opened:
        _run(opened)
