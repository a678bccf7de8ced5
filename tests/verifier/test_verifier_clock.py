"""Wall-clock steps: a step back never extends trust, a nonce's lifetime or a signed status
(stockade.verifier.clock.SteadyClock); a verifier whose clock is behind what it stored refuses
to issue (503 ``clock-behind``)."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import shutil
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from verifier_support import DevAgent, policy_document, read, reader_headers

from stockade.cluster.status import verify_status
from stockade.statements import VerifierKeys
from stockade.verifier import VerifierConfig
from stockade.verifier.clock import SteadyClock
from stockade.verifier.models import Event
from stockade.verifier.service import stored_time_floor
from stockade.verifier.states import sweep_stale
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier, ek_ca_files

HOUR = 3600.0


def pinned(jwks: bytes) -> VerifierKeys:
    """The test pins the key set of the verifier it runs (a relying party pins it from a
    channel it trusts)."""
    return VerifierKeys.parse(jwks, "the verifier's keys")


class FakeTime:
    """A wall clock and a monotonic clock a test moves: ``elapse`` moves both (time passes),
    ``step`` moves only the wall clock (someone sets it)."""

    def __init__(self, real: bool = False) -> None:
        self.real = real
        self.wall_offset = 0.0
        self.mono_offset = 0.0
        self.start = datetime(2026, 1, 1, tzinfo=UTC)

    def wall(self) -> datetime:
        base = datetime.now(UTC) if self.real else self.start
        return base + timedelta(seconds=self.wall_offset)

    def monotonic(self) -> float:
        return (time.monotonic() if self.real else 1000.0) + self.mono_offset

    def elapse(self, seconds: float) -> None:
        self.wall_offset += seconds
        self.mono_offset += seconds

    def step(self, seconds: float) -> None:
        self.wall_offset += seconds

    def clock(self, tolerance: float = 1.0) -> SteadyClock:
        return SteadyClock(self.wall, self.monotonic, tolerance_seconds=tolerance)


# -- the clock itself --------------------------------------------------------------------


def test_steady_clock_ignores_a_step_back_and_logs_it_once(caplog):
    fake = FakeTime()
    clock = fake.clock()
    assert clock() == fake.start
    fake.elapse(10)
    assert clock() == fake.start + timedelta(seconds=10)
    with caplog.at_level(logging.WARNING, logger="stockade.verifier.clock"):
        fake.step(-HOUR)
        for _ in range(5):
            fake.elapse(1)
            clock()
    assert clock() == fake.start + timedelta(seconds=15)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "stepped back 3600.0 s" in lines[0], lines


def test_steady_clock_adopts_a_forward_step_and_never_decreases():
    fake = FakeTime()
    clock = fake.clock()
    fake.step(HOUR)
    assert clock() == fake.start + timedelta(seconds=HOUR)  # deadlines pass sooner
    fake.step(-HOUR)  # and back again: time stays where it got to
    fake.elapse(2)
    assert clock() == fake.start + timedelta(seconds=HOUR + 2)
    readings = []
    for step in (0.3, -0.5, 0.2, -5, 7, -100):
        fake.step(step)
        fake.elapse(0.1)
        readings.append(clock())
    assert readings == sorted(readings)


def test_steady_clock_follows_slew_within_tolerance(caplog):
    fake = FakeTime()
    clock = fake.clock(tolerance=1.0)
    with caplog.at_level(logging.WARNING, logger="stockade.verifier.clock"):
        fake.step(-0.5)  # NTP slewing: no step, no log; monotonic time rules
        fake.elapse(1)
        assert clock() == fake.start + timedelta(seconds=1)
        fake.step(0.9)  # ahead by 0.4 s of monotonic time: within tolerance, not adopted
        assert clock() == fake.start + timedelta(seconds=1)
    assert caplog.records == []


# -- the verifier's deadlines under a step back --------------------------------------------


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime(real=True)


@pytest.fixture
def stepped(
    make_client: Callable[..., TestClient], verifier_config: VerifierConfig, fake_time: FakeTime
) -> TestClient:
    config = dataclasses.replace(verifier_config, clock=fake_time.clock())
    return make_client(config, policy=policy_document(validity=60))


def test_a_step_back_does_not_extend_trust_status_or_a_nonce(stepped, fake_time, software_tpm):
    api = stepped
    service = api.app.state.service
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(api, "node-step")
    attested = agent.attest(api)
    assert attested.status_code == 200 and attested.json()["status"] == "affirming"
    deadline = service.now() + timedelta(seconds=60)
    nonce = agent.nonce(api)  # lives 30 s

    # The wall clock steps back an hour; then 61 s really pass (the agent signs with real
    # time, within the channel's skew: it did not step).
    fake_time.step(-HOUR)
    fake_time.elapse(61)
    assert service.now() >= deadline
    # The node that stopped attesting is untrusted at its real deadline (effective_state,
    # whether or not the sweeper wrote it yet) ...
    node = read(api, f"/v1/nodes/{node_id}").json()
    assert node["state"] == "untrusted", node
    # ... its signed status says so ...
    status = api.get(f"/v1/nodes/{node_id}/status").json()
    assert status["trusted"] is False, status
    keys = pinned(api.get("/v1/keys").content)
    assert not verify_status(status["statement"], keys, node_id, service.now()).trusted
    # ... the sweeper marks it stale ...
    sweep_stale(service)
    with service.sessions() as session:
        reasons = session.scalars(select(Event.reason).where(Event.node_id == node_id)).all()
    assert "stale" in reasons, reasons
    # ... and the nonce issued before the step is past its real lifetime: refused.
    late = api.post(f"/v1/nodes/{node_id}/evidence", json=agent.evidence(nonce), auth=agent.auth)
    assert late.status_code == 409 and late.json()["error"] == "nonce", late.text


def test_a_nonce_issued_after_a_step_back_lives_its_real_lifetime(stepped, fake_time, software_tpm):
    api = stepped
    agent = DevAgent.create(software_tpm)
    agent.enroll(api, "node-nonce")
    fake_time.step(-HOUR)
    issued = api.post(f"/v1/nodes/{agent.node_id}/nonces", auth=agent.auth)
    assert issued.status_code == 201, issued.text
    expires = datetime.fromisoformat(issued.json()["expires_at"].replace("Z", "+00:00"))
    # Dated by the steady clock, not the stepped wall clock: it expires 30 s after real now.
    assert abs((expires - datetime.now(UTC)).total_seconds() - 30) < 5
    fake_time.elapse(31)
    nonce = base64.b64decode(issued.json()["nonce"])
    late = api.post(
        f"/v1/nodes/{agent.node_id}/evidence", json=agent.evidence(nonce), auth=agent.auth
    )
    assert late.status_code == 409 and late.json()["error"] == "nonce", late.text


# -- across restarts: never issue behind the newest stored time ----------------------------


def test_a_restart_with_the_clock_behind_refuses_to_issue(
    make_client, verifier_config, software_tpm, caplog
):
    ahead = FakeTime(real=True)
    ahead.step(HOUR)  # the first run's clock was an hour ahead (or this one's stepped back)
    first = make_client(
        dataclasses.replace(verifier_config, clock=ahead.clock()), policy=policy_document()
    )
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(first, "node-restart")

    with caplog.at_level(logging.ERROR, logger="stockade.verifier.service"):
        api = make_client(verifier_config)  # real time: an hour behind what is stored
    refused = api.post(f"/v1/nodes/{node_id}/nonces", auth=agent.auth)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "clock-behind"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    status = api.get(f"/v1/nodes/{node_id}/status")
    assert status.status_code == 503 and status.json()["error"] == "clock-behind"
    assert api.get("/readyz").status_code == 503
    assert api.get("/v1/health").status_code == 200  # alive, not ready
    behind = [r for r in caplog.records if "behind the newest stored time" in r.getMessage()]
    assert len(behind) == 1, [r.getMessage() for r in caplog.records]

    # Reads still work; the clock catching up (here: the next run, an hour later) issues again.
    assert read(api, f"/v1/nodes/{node_id}").status_code == 200
    later = FakeTime(real=True)
    later.step(HOUR + 10)
    again = make_client(dataclasses.replace(verifier_config, clock=later.clock()))
    assert again.get("/readyz").status_code == 200


def test_the_clock_floor_comes_from_indexed_reads(client, verifier_config):
    service = client.app.state.service
    with service.sessions() as session:
        floor = stored_time_floor(session, verifier_config.nonce_ttl_seconds)
    assert floor is None or floor <= service.now()


# -- a real `stockade verifier serve` whose wall clock steps back (Debian's faketime) --------


def _faketime_library() -> str | None:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    return str(found[0]) if found and shutil.which("faketime") else None


def _set_fake_time(control: Path, when: datetime) -> None:
    # "@YYYY-MM-DD hh:mm:ss": an absolute time that then advances (FAKETIME_NO_CACHE=1:
    # the running process rereads the file on every call).
    control.write_text(when.astimezone(UTC).strftime("@%Y-%m-%d %H:%M:%S\n"))


@pytest.mark.swtpm
def test_served_verifier_keeps_real_deadlines_across_a_step_back(
    tmp_path: Path, ek_ca, software_tpm, database_url: str | None
):
    library = _faketime_library()
    if library is None:
        pytest.skip("faketime is not installed (scripts/bootstrap.sh)")
    control = tmp_path / "faketime"
    _set_fake_time(control, datetime.now(UTC))
    policy = tmp_path / "policy.json"
    validity = 8
    nonce_ttl = 4
    policy.write_text(json.dumps(policy_document("clock", validity=validity)))
    data_dir = tmp_path / "data"
    verifier = ServedVerifier(
        data_dir,
        ek_ca=ek_ca_files(ek_ca),
        policy=policy,
        database=database_url,
        # `stockade verifier serve` as shipped but for its appraiser (the tests' quote-only
        # one: a dev swtpm without a signed release is trusted) and a short nonce lifetime.
        prelude=f"{QUOTE_ONLY_APPRAISER}; "
        "import dataclasses; create = app.create_app; "
        "app.create_app = lambda config: create(dataclasses.replace(config, "
        f"nonce_ttl_seconds={nonce_ttl}))",
        env={
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(control),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_RESET": "1",
        },
    )
    with verifier:
        printed = verifier.banner()
        context = ssl.create_default_context(cafile=printed["TLS CA cert"])
        with httpx.Client(base_url=printed["verifier"], verify=context, timeout=10) as client:
            agent = DevAgent.create(software_tpm)
            node_id = agent.enroll(client, "node-faketime")
            attested = agent.attest(client)
            assert attested.status_code == 200, attested.text
            reader = reader_headers(data_dir)
            node = client.get(f"/v1/nodes/{node_id}", headers=reader).json()
            assert node["state"] == "trusted", (attested.json(), node)
            deadline = datetime.fromisoformat(node["trusted_until"].replace("Z", "+00:00"))
            nonce = agent.nonce(client)  # lives nonce_ttl: used after the step below

            # The node stops attesting; the verifier's wall clock steps back an hour.
            _set_fake_time(control, datetime.now(UTC) - timedelta(hours=1))
            # The agent signs with the real time: the verifier, which did not go back, agrees.
            time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 1.5)
            node = client.get(f"/v1/nodes/{node_id}", headers=reader).json()
            assert node["state"] == "untrusted", node
            status = client.get(f"/v1/nodes/{node_id}/status").json()
            assert status["trusted"] is False, status
            keys = pinned(client.get("/v1/keys").content)
            assert not verify_status(status["statement"], keys, node_id, datetime.now(UTC)).trusted
            # Issued after the step back: still dated by real time.
            issued_at = datetime.fromisoformat(
                client.post(f"/v1/nodes/{node_id}/nonces", auth=agent.auth)
                .json()["expires_at"]
                .replace("Z", "+00:00")
            )
            assert issued_at > datetime.now(UTC)
            # The nonce issued before the step, used after its real lifetime: refused.
            late = client.post(
                f"/v1/nodes/{node_id}/evidence", json=agent.evidence(nonce), auth=agent.auth
            )
            assert late.status_code == 409 and late.json()["error"] == "nonce", late.text
        stderr = verifier.stderr_lines()
        step_lines = [line for line in stderr if "stepped back" in line]
        assert len(step_lines) == 1, stderr
        stepped_by = float(step_lines[0].split("stepped back ")[1].split(" s")[0])
        assert 3500 < stepped_by < 3700, step_lines
