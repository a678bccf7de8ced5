"""The database: an engine (SQLite WAL by default, PostgreSQL by URL), checked and migrated
on startup.

SQLite runs with ``synchronous=NORMAL``: commits are written to the WAL, which is fsync'd
at checkpoints, and by the transparency log before a receipt leaves
(``stockade.verifier.transparency``, ``sync_sqlite_wal``), so a power loss cannot take back
a result whose receipt was handed out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from stockade.verifier.errors import ConfigurationError

MIGRATIONS = Path(__file__).parent / "migrations"
# Threads that run blocking request work (anyio's default limiter, set at start): beyond the
# cores and the database's own concurrency, more threads only contend for the GIL and the pool.
REQUEST_THREADS = 8

log = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A local file needs no liveness ping, and the pool holds a connection for every
        # request thread (THREADS): connections made beyond the pool would be opened, set up
        # and closed again on every use.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=REQUEST_THREADS + 4,
            max_overflow=REQUEST_THREADS,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: object) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=REQUEST_THREADS + 4, max_overflow=REQUEST_THREADS
    )


class DatabaseUnusable(ConfigurationError):
    """The database cannot be opened, or fails its integrity check, at start."""


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _reason(error: DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)


def check_database(engine: Engine) -> None:
    """Refuse (``DatabaseUnusable``, one line) a database that cannot be opened, or a SQLite
    file that fails ``PRAGMA quick_check`` (a corrupt header, page or index). It reads every
    page once: O(size of the file), at start only."""
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                problems = [
                    " ".join(str(row).split())
                    for row in connection.exec_driver_sql("PRAGMA quick_check").scalars()
                ]
                if problems != ["ok"]:
                    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                    raise DatabaseUnusable(
                        f"the database {_where(engine)} failed PRAGMA quick_check: "
                        f"{problems[0]}{more}; restore it from a backup (docs/operations.md)"
                    )
            elif engine.dialect.name == "postgresql":
                commit = connection.exec_driver_sql("SHOW synchronous_commit").scalar_one()
                if commit == "off":
                    log.warning(
                        "the database %s runs with synchronous_commit=off: a crash can lose "
                        "results already answered, and the transparency log will then refuse "
                        "to continue (docs/operations.md)",
                        _where(engine),
                    )
    except DBAPIError as error:
        raise DatabaseUnusable(
            f"cannot use the database {_where(engine)}: {_reason(error)}"
        ) from None


def sync_sqlite_wal(database: Path) -> None:
    """Make every commit to the SQLite ``database`` so far durable: fsync its WAL (where
    ``synchronous=NORMAL`` leaves them until a checkpoint), or the file itself without one."""
    for member in (database.with_name(database.name + "-wal"), database):
        try:
            fd = os.open(member, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return


# pg_advisory_xact_lock key serializing migrations across replicas ("stockmig" in ASCII).
MIGRATION_LOCK = 0x73746F636B6D6967


def migrate(engine: Engine) -> None:
    """``check_database``, then ``alembic upgrade head`` on ``engine``."""
    check_database(engine)
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas starting together migrate one at a time: the lock is the
                # transaction's, released at its commit (or when its holder dies).
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except DBAPIError as error:
        raise DatabaseUnusable(
            f"cannot migrate the database {_where(engine)}: {_reason(error)}"
        ) from None


class SchemaNotAtHead(ConfigurationError):
    """``--no-migrate``: the database's schema is not the one this version needs."""


def _scripts() -> ScriptDirectory:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def require_head(engine: Engine) -> None:
    """``check_database``, then refuse (``SchemaNotAtHead``, one line) a database whose schema
    is not at this version's head revision: never migrated, behind (run ``stockade verifier
    migrate``), or ahead (a newer version migrated it). Nothing is written."""
    check_database(engine)
    head = _scripts().get_current_head()
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    except DBAPIError as error:
        raise DatabaseUnusable(
            f"cannot read the schema of {_where(engine)}: {_reason(error)}"
        ) from None
    if current != (head,):
        found = ", ".join(current) or "none (never migrated)"
        raise SchemaNotAtHead(
            f"the database {_where(engine)} is at schema revision {found}, this verifier needs "
            f"{head}: run `stockade verifier migrate` first (--no-migrate never migrates)"
        )


def open_schema(engine: Engine, migrate_on_start: bool) -> None:
    """What ``create_app`` does to the schema: ``migrate`` (``migrate_on_start``), or
    ``require_head`` (``verifier serve --no-migrate``)."""
    if migrate_on_start:
        migrate(engine)
    else:
        require_head(engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rows_changed(result: object) -> int:
    """How many rows an UPDATE or DELETE changed (``Session.execute`` is typed as returning any
    ``Result``; for these statements it is a ``CursorResult``)."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"{type(result).__name__} does not count changed rows")
    return int(result.rowcount)
