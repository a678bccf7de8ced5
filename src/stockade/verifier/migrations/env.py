"""Alembic environment: always run programmatically with a connection in ``attributes``."""

from __future__ import annotations

from alembic import context

from stockade.verifier.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through stockade.verifier.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
