"""A database outage is one log line per burst for the webhook worker too, not a warning on
every poll (four a second) for as long as the outage lasts."""

from __future__ import annotations

import logging
import shutil
import time

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from stockade.verifier.errors import OutageLog
from stockade.verifier.models import Base
from stockade.verifier.webhooks import WebhookWorker


def test_a_database_outage_is_logged_once_not_per_poll(tmp_path, caplog):
    directory = tmp_path / "db"
    directory.mkdir()
    engine = create_engine(f"sqlite:///{directory / 'verifier.db'}", poolclass=NullPool)
    Base.metadata.create_all(engine)
    worker = WebhookWorker(
        engine,
        ["https://127.0.0.1:9/hook"],
        ec.generate_private_key(ec.SECP256R1()),
        poll_seconds=0.01,
        outage=OutageLog(interval=60.0),
    )
    shutil.rmtree(directory)  # the database is gone: every poll fails to connect
    with caplog.at_level(logging.WARNING):
        worker.start()
        time.sleep(1.0)
        worker.stop(timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("stockade")]
    outage = [line for line in lines if "database unavailable (webhooks)" in line]
    assert len(outage) == 1, lines
    assert not [line for line in lines if "cannot read events" in line], lines
    assert worker.outage.failing
