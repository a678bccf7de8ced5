"""Webhook deliveries in the Standard Webhooks format (https://www.standardwebhooks.com/),
checked with the stock ``standardwebhooks`` package a receiver would use, never with our own
verifier: a delivery verifies; a tampered body, a replay (an old timestamp, or an old
signature under a new timestamp or another event's id) and a wrong secret are refused;
``webhook-id`` is the event id on every redelivery while ``webhook-timestamp`` is each
attempt's time; secret files others may read are refused; and the secret appears in no log,
no ``/v1/...`` answer and no process argument of a real ``stockade verifier serve``."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, insert
from sqlalchemy.orm import sessionmaker
from standardwebhooks import Webhook, WebhookVerificationError
from verifier_support import operator_headers, reader_headers

from stockade.verifier.config import parse_webhook_secret_options
from stockade.verifier.db import make_engine
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.models import Event
from stockade.verifier.webhooks import (
    EVENT_ID_HEADER,
    STANDARD_ID_HEADER,
    STANDARD_SIGNATURE_HEADER,
    STANDARD_TIMESTAMP_HEADER,
    WebhookSecret,
    WebhookWorker,
    load_webhook_secret,
    load_webhook_secrets,
    verify_signature,
)
from support.nodes import placeholder_node
from support.verifier_serve import ServedVerifier
from support.webhook_receiver import Delivery, Receiver


def _secret_file(path: Path, *secrets: WebhookSecret, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(secret.text() + "\n" for secret in secrets))
    path.chmod(mode)
    return path


def _add_event(engine: Engine, reason: str = "operator") -> str:
    now = datetime.now(UTC)
    node_id = str(uuid.uuid4())
    with sessionmaker(engine)() as session, session.begin():
        session.add(placeholder_node(node_id, f"n-{node_id[:8]}", now))
    with engine.begin() as connection:
        connection.execute(
            insert(Event).values(
                node_id=node_id, name="n", from_state="enrolled", to_state="revoked",
                reason=reason, time=now,
            )
        )  # fmt: skip
    return node_id


def _worker(engine: Engine, url: str, secret_file: Path | None, **options: object) -> WebhookWorker:
    files = {url: secret_file} if secret_file is not None else {}
    return WebhookWorker(
        engine,
        [url],
        ec.generate_private_key(ec.SECP256R1()),
        secrets=load_webhook_secrets(files, [url]),
        **options,  # type: ignore[arg-type]
    )


def _stock_verify(secret: WebhookSecret, delivery: Delivery) -> object:
    """What a receiver runs: the stock library, the raw body and the headers as received."""
    return Webhook(secret.text()).verify(delivery.body, delivery.headers)


# -- the format, verified by stock code -------------------------------------------------------


def test_a_delivery_verifies_with_the_stock_library(
    tmp_path: Path, engine: Engine, receiver: Receiver
) -> None:
    secret = WebhookSecret.generate()
    worker = _worker(engine, receiver.url, _secret_file(tmp_path / "secret", secret))
    node_id = _add_event(engine)
    assert worker.deliver_pending() == 1
    (delivery,) = receiver.received()

    event = _stock_verify(secret, delivery)
    assert isinstance(event, dict) and event["node_id"] == node_id
    # webhook-id is the event id (what receivers deduplicate by), as Stockade-Event-Id is.
    assert delivery.headers[STANDARD_ID_HEADER] == str(event["id"])
    assert delivery.headers[STANDARD_ID_HEADER] == delivery.headers[EVENT_ID_HEADER.lower()]
    assert abs(int(delivery.headers[STANDARD_TIMESTAMP_HEADER]) - time.time()) < 30
    assert delivery.headers[STANDARD_SIGNATURE_HEADER].startswith("v1,")
    # Stockade-Signature is still there, unchanged: ES256 over the body with the verifier key.
    assert verify_signature(worker.signing_key.public_key(), delivery.body, delivery.signature)


def test_tampered_replayed_and_wrongly_keyed_deliveries_are_refused_by_the_stock_library(
    tmp_path: Path, engine: Engine, receiver: Receiver
) -> None:
    secret = WebhookSecret.generate()
    file = _secret_file(tmp_path / "secret", secret)
    _add_event(engine, "first")
    _add_event(engine, "second")
    assert _worker(engine, receiver.url, file).deliver_pending() == 2
    first, second = receiver.received()
    _stock_verify(secret, first)
    _stock_verify(secret, second)

    def refused(delivery: Delivery, **headers: str) -> str:
        forged = Delivery(
            delivery.event_id, delivery.body, delivery.signature, delivery.at,
            delivery.headers | {k.replace("_", "-"): v for k, v in headers.items()},
        )  # fmt: skip
        with pytest.raises(WebhookVerificationError) as error:
            _stock_verify(secret, forged)
        return str(error.value)

    # A tampered body: the revocation made to read as a trust.
    tampered = first.body.replace(b'"to":"revoked"', b'"to":"trusted"')
    assert tampered != first.body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret.text()).verify(tampered, first.headers)
    # The wrong secret (another receiver's, or a guess).
    with pytest.raises(WebhookVerificationError):
        Webhook(WebhookSecret.generate().text()).verify(first.body, first.headers)
    # A replay with a fresh timestamp header but the old signature; and one event's signature
    # sent as another event's (the id is signed).
    assert "signature" in refused(first, webhook_timestamp=str(int(time.time()) + 1))
    assert "signature" in refused(first, webhook_id=second.headers[STANDARD_ID_HEADER])
    # No signature at all.
    assert "headers" in refused(first, webhook_signature="")

    # A replay of a delivery captured ten minutes ago: its signed timestamp is too old.
    receiver.deliveries.clear()
    _add_event(engine, "third")
    captured_earlier = _worker(engine, receiver.url, file, wall_clock=lambda: time.time() - 600)
    with engine.begin() as connection:  # this worker starts from the beginning of the stream
        connection.exec_driver_sql("DELETE FROM webhook_cursors")
    assert captured_earlier.deliver_pending() == 3
    old = receiver.received()[-1]
    with pytest.raises(WebhookVerificationError, match="too old"):
        _stock_verify(secret, old)


def test_a_redelivery_keeps_the_id_and_stamps_its_own_attempt_time(
    tmp_path: Path, engine: Engine
) -> None:
    secret = WebhookSecret.generate()
    receiver = Receiver(refuse=1)
    try:
        attempts = iter((time.time() - 40, time.time()))
        worker = _worker(
            engine,
            receiver.url,
            _secret_file(tmp_path / "secret", secret),
            initial_backoff=0.0,
            wall_clock=lambda: next(attempts),
        )
        _add_event(engine)
        assert worker.deliver_pending() == 0  # refused: retried
        assert worker.deliver_pending() == 1
        (refused,) = receiver.refused
        (delivered,) = receiver.received()
    finally:
        receiver.close()
    assert refused.headers[STANDARD_ID_HEADER] == delivered.headers[STANDARD_ID_HEADER]
    assert refused.body == delivered.body
    first, second = (int(d.headers[STANDARD_TIMESTAMP_HEADER]) for d in (refused, delivered))
    assert second - first >= 39  # each attempt's own time, each signed
    for delivery in (refused, delivered):
        _stock_verify(secret, delivery)


def test_two_secrets_in_the_file_sign_each_delivery_twice_for_a_rotation(
    tmp_path: Path, engine: Engine, receiver: Receiver
) -> None:
    old, new = WebhookSecret.generate(), WebhookSecret.generate()
    worker = _worker(engine, receiver.url, _secret_file(tmp_path / "secret", old, new))
    _add_event(engine)
    assert worker.deliver_pending() == 1
    (delivery,) = receiver.received()
    assert len(delivery.headers[STANDARD_SIGNATURE_HEADER].split(" ")) == 2
    _stock_verify(old, delivery)
    _stock_verify(new, delivery)


def test_a_url_without_a_secret_gets_the_id_and_timestamp_but_no_signature(
    engine: Engine, receiver: Receiver
) -> None:
    worker = _worker(engine, receiver.url, None)
    _add_event(engine)
    assert worker.deliver_pending() == 1
    (delivery,) = receiver.received()
    assert STANDARD_SIGNATURE_HEADER not in delivery.headers
    assert delivery.headers[STANDARD_ID_HEADER] == str(delivery.event_id)
    with pytest.raises(WebhookVerificationError):
        _stock_verify(WebhookSecret.generate(), delivery)


# -- secret files and options ---------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_secret_file_group_or_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    secret = WebhookSecret.generate()
    path = _secret_file(tmp_path / "secret", secret, mode=mode)
    with pytest.raises(ConfigurationError, match="readable by group or others") as error:
        load_webhook_secret(path)
    assert secret.text() not in str(error.value)
    path.chmod(0o600)
    assert load_webhook_secret(path) == (secret,)


def test_a_malformed_secret_is_refused_without_quoting_it(tmp_path: Path) -> None:
    short = WebhookSecret.generate().text()[:20]  # 10 bytes: below the spec's 24
    cases = {
        "no prefix": WebhookSecret.generate().text().removeprefix("whsec_"),
        "not base64": "whsec_" + "!" * 40,
        "too short": short,
        "empty": "# only a comment",
    }
    for name, content in cases.items():
        path = tmp_path / name.replace(" ", "-")
        path.write_text(content + "\n")
        path.chmod(0o600)
        with pytest.raises(ConfigurationError) as error:
            load_webhook_secret(path)
        assert content.removeprefix("# ") not in str(error.value), name
    assert "hidden" in repr(WebhookSecret.generate())
    assert "whsec_" not in str(WebhookSecret.generate())


def test_webhook_secret_options() -> None:
    urls = ["https://a.example/hook", "https://b.example/h?token=x"]
    assert parse_webhook_secret_options(
        ["https://a.example/hook=/s/a", "https://b.example/h?token=x=/s/b"], urls
    ) == {urls[0]: Path("/s/a"), urls[1]: Path("/s/b")}
    for bad in ("no-equals", "https://a.example/hook=", "https://c.example/=/s/c"):
        with pytest.raises(ConfigurationError):
            parse_webhook_secret_options([bad], urls)
    with pytest.raises(ConfigurationError, match="twice"):
        parse_webhook_secret_options([f"{urls[0]}=/x", f"{urls[0]}=/y"], urls)
    with pytest.raises(ConfigurationError, match="no --webhook"):
        load_webhook_secrets({"https://c.example/": Path("/x")}, urls)


# -- a real verifier process ------------------------------------------------------------------


def _served(tmp_path: Path, receiver: Receiver, file: Path) -> ServedVerifier:
    return ServedVerifier(
        tmp_path / "data",
        extra=("--webhook", receiver.url, "--webhook-secret", f"{receiver.url}={file}"),
    )


def _check_served_verifier_hides_the_secret(tmp_path: Path) -> None:
    secret = WebhookSecret.generate()
    file = _secret_file(tmp_path / "receiver.whsec", secret)
    receiver = Receiver(refuse=1)  # one failure, so the retry is logged
    verifier = _served(tmp_path, receiver, file)
    try:
        with verifier:
            assert verifier.process is not None
            cmdline = Path(f"/proc/{verifier.process.pid}/cmdline").read_bytes()
            assert str(file).encode() in cmdline  # the path, never the secret
            engine = make_engine(f"sqlite:///{verifier.data_dir / 'verifier.db'}")
            node_id = str(uuid.uuid4())
            with sessionmaker(engine)() as session, session.begin():
                session.add(placeholder_node(node_id, "node-whsec", datetime.now(UTC)))
            engine.dispose()
            answers: list[str] = []
            with verifier.httpx_client() as client:
                revoked = client.post(
                    f"/v1/nodes/{node_id}/revoke",
                    json={},
                    headers=operator_headers(verifier.data_dir),
                )
                assert revoked.status_code == 200, revoked.text
                deadline = time.monotonic() + 20
                while not receiver.received():
                    assert time.monotonic() < deadline, verifier.output()
                    time.sleep(0.05)
                reader = reader_headers(verifier.data_dir)
                for path in (
                    "/v1/health", "/v1/keys", "/v1/nodes", f"/v1/nodes/{node_id}",
                    "/v1/events?after=0&follow=false", "/v1/security-events", "/v1/openapi.json",
                    "/metrics", "/readyz", "/v1/policies", "/v1/log/checkpoint",
                ):  # fmt: skip
                    answer = client.get(path, headers=reader)
                    assert answer.status_code < 500, (path, answer.text)
                    answers.append(answer.text)
            environ = Path(f"/proc/{verifier.process.pid}/environ").read_bytes()
        (delivery,) = receiver.received()
        (refused,) = receiver.refused
    finally:
        receiver.close()
    event = _stock_verify(secret, delivery)
    assert isinstance(event, dict) and event["node_id"] == node_id and event["to"] == "revoked"
    assert delivery.headers[STANDARD_ID_HEADER] == refused.headers[STANDARD_ID_HEADER]
    log = verifier.output()
    assert "not delivered" in log  # the refusal was logged, without the secret
    key_forms = {secret.text(), secret.text().removeprefix("whsec_")}
    for text in (log, cmdline.decode(errors="replace"), environ.decode(errors="replace"), *answers):
        for form in key_forms:
            assert form not in text


@pytest.mark.tools
def test_a_served_verifier_signs_for_stock_receivers_and_shows_the_secret_nowhere(
    tmp_path: Path,
) -> None:
    _check_served_verifier_hides_the_secret(tmp_path)


@pytest.mark.tools
def test_a_served_verifier_refuses_a_secret_file_others_may_read(tmp_path: Path) -> None:
    secret = WebhookSecret.generate()
    file = _secret_file(tmp_path / "receiver.whsec", secret, mode=0o644)
    url = "https://receiver.invalid/hook"
    verifier = ServedVerifier(
        tmp_path / "data", extra=("--webhook", url, "--webhook-secret", f"{url}={file}")
    )
    result = verifier.run_to_exit()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "readable by group or others" in result.stderr
    assert "Traceback" not in result.stderr
    assert secret.text() not in result.stdout + result.stderr


def test_event_bodies_are_compact_json_the_stock_library_parses(
    tmp_path: Path, engine: Engine, receiver: Receiver
) -> None:
    secret = WebhookSecret.generate()
    worker = _worker(engine, receiver.url, _secret_file(tmp_path / "s", secret))
    _add_event(engine)
    worker.deliver_pending()
    (delivery,) = receiver.received()
    assert _stock_verify(secret, delivery) == json.loads(delivery.body)
    # httpx client of a receiver framework gets the same bytes: nothing re-encodes them.
    assert httpx.Headers(delivery.headers)[STANDARD_ID_HEADER] == str(delivery.event_id)
