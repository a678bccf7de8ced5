"""Three ``stockade verifier serve`` processes on one database behave as one verifier.

The replicas share one database (PostgreSQL when ``STOCKADE_TEST_DATABASE_URL`` is set, else
one SQLite file, which several processes on one machine share through its WAL) and one
directory of keys made by ``stockade verifier keys`` and laid out as kubelet mounts a Secret
(files behind ``..data`` symlinks). The schema is made by ``stockade verifier migrate`` and
every replica starts with ``--no-migrate``. Software TPMs enroll and attest against any
replica; a webhook receiver records every POST.

The tests run in order on one cluster (module fixture): exactly-once delivery while all is
well, a policy activated on one replica and applied by the others, concurrent attestations
on every replica in one consistent transparency log, then the leader (holder of the sweeper
lease and deliverer of the webhook) killed with SIGKILL, then another replica killed under
attestation load. Counts are printed (``pytest -s``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, create_engine, text
from verifier_support import DevAgent, operator_headers, policy_document, reader_headers

from stockade.strict_json import canonical_json
from stockade.tpm.swtpm import start_swtpm
from stockade.translog import NoteVerifier
from stockade.translog.checkpoint import open_checkpoint
from stockade.translog.merkle import verify_consistency
from stockade.translog.receipt import Receipt, verify_receipt
from stockade.verifier.db import make_engine
from stockade.verifier.leadership import SWEEPER
from stockade.verifier.webhooks import verify_signature
from support.cli import run_stockade
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier, ek_ca_files
from support.webhook_receiver import Receiver

pytestmark = pytest.mark.tools

DATABASE_ENV = "STOCKADE_TEST_DATABASE_URL"
ORIGIN = "replicas.example/log"
SWEEPER_LEASE = 2.0  # --leader-lease-seconds
WEBHOOK_LEASE = 10.0  # stockade.verifier.webhooks.WebhookWorker.lease_seconds
AGENTS = 4


# --- the cluster --------------------------------------------------------------------------


@dataclass
class Replica(ServedVerifier):
    prelude: str = QUOTE_ONLY_APPRAISER

    def client(self) -> httpx.Client:
        return self.httpx_client(timeout=20)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    replicas: list[Replica]
    engine: Engine
    keys: Path
    receiver: Receiver
    agents: list[DevAgent]
    statement_key: ec.EllipticCurvePublicKey
    log_key: NoteVerifier

    @property
    def alive(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.alive()]

    def operator(self) -> dict[str, str]:
        return operator_headers(self.keys)

    def reader(self) -> dict[str, str]:
        return reader_headers(self.keys)

    def holder_pid(self, query: str) -> int | None:
        with self.engine.connect() as connection:
            holder = connection.execute(text(query)).scalar()
        return None if holder is None else int(str(holder).rsplit("-", 2)[1])

    def sweeper_pid(self) -> int | None:
        return self.holder_pid(f"SELECT holder FROM leases WHERE name = '{SWEEPER}'")

    def deliverer_pid(self) -> int | None:
        return self.holder_pid("SELECT claimed_by FROM webhook_cursors")

    def positions(self, timeout: float = 20.0) -> list[int]:
        """Every stored event's position, once every stored event has one."""
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as connection:
                unplaced = connection.execute(
                    text("SELECT count(*) FROM events WHERE position IS NULL")
                ).scalar_one()
                positions = connection.execute(
                    text("SELECT position FROM events WHERE position IS NOT NULL")
                ).scalars()
                placed = sorted(int(position) for position in positions)
            if unplaced == 0:
                return placed
            assert time.monotonic() < deadline, f"{unplaced} events never got a position"
            time.sleep(0.1)

    def wait_delivered(self, positions: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not set(positions) <= set(self.receiver.ids()):
            missing = sorted(set(positions) - set(self.receiver.ids()))
            assert time.monotonic() < deadline, f"never delivered: {missing[:20]}"
            time.sleep(0.1)
        time.sleep(0.5)  # anything delivered twice arrives now


def _database(tmp: Path) -> str:
    url = os.environ.get(DATABASE_ENV)
    if not url:
        return f"sqlite:///{tmp / 'shared.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:  # every table the verifier ever made goes
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def _as_kubelet_mounts_a_secret(made: Path, mount: Path) -> None:
    """``mount/<name> -> ..data/<name>``, ``..data -> ..<timestamp>/`` holding the files."""
    timestamped = mount / "..2026_12_06_10_00_00.000000001"
    timestamped.mkdir(parents=True, mode=0o700)
    mount.chmod(0o700)
    for path in made.iterdir():
        path.rename(timestamped / path.name)
        (mount / path.name).symlink_to(Path("..data") / path.name)
    (mount / "..data").symlink_to(timestamped.name)
    made.rmdir()


def _policy_file(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / f"{document['id']}.json"
    path.write_bytes(canonical_json(document))
    return path


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, ek_ca: Any, stockade_home: Path, swtpm_template: Path
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    database = _database(tmp)
    made = run_stockade("verifier", "keys", "--out", tmp / "made", "--log-origin", ORIGIN)
    assert made.returncode == 0, made.stderr
    keys = tmp / "secret"
    _as_kubelet_mounts_a_secret(tmp / "made", keys)
    migrated = run_stockade("verifier", "migrate", "--database", database)
    assert migrated.returncode == 0, migrated.stderr
    receiver = Receiver()
    policy = _policy_file(tmp, policy_document())
    engine = make_engine(database)
    tpms: list[Any] = []
    extra = (
        "--keys-dir", str(keys), "--no-migrate", "--log-origin", ORIGIN,
        "--webhook", receiver.url, "--leader-lease-seconds", str(SWEEPER_LEASE),
    )  # fmt: skip
    replicas = [
        Replica(
            tmp / f"replica-{number}",
            ek_ca_files(ek_ca),
            policy if number == 0 else None,
            database,
            extra=extra,
        )
        for number in range(3)
    ]
    try:
        # The first takes the sweeper lease and the webhook URL; the others start after it.
        first = replicas[0]
        first.start()
        built = Cluster(
            replicas,
            engine,
            keys,
            receiver,
            [],
            _statement_key(keys),
            NoteVerifier.from_key_string((keys / "log-key.pub").read_text()),
        )
        deadline = time.monotonic() + 10
        while built.sweeper_pid() != first.pid or built.deliverer_pid() != first.pid:
            assert time.monotonic() < deadline, "the first replica never took its leases"
            time.sleep(0.1)
        for replica in replicas[1:]:
            replica.launch()
        for replica in replicas[1:]:
            replica.wait_ready()
        for number in range(AGENTS):
            template = swtpm_template if number == 0 else None  # each its own EK
            tpm = start_swtpm(f"replica-node-{number}", stockade_home, ek_ca, template=template)
            tpms.append(tpm)
            agent = DevAgent.create(tpm)
            with replicas[number % 3].client() as client:
                agent.enroll(client, f"replica-node-{number}")
            built.agents.append(agent)
        yield built
    finally:
        for replica in replicas:
            replica.stop(sig=signal.SIGKILL)
        for tpm in tpms:
            tpm.stop()
        receiver.close()
        engine.dispose()


def _statement_key(keys: Path) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key((keys / "verifier-key.pub.pem").read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _attest(agent: DevAgent, replica: Replica) -> dict[str, Any]:
    with replica.client() as client:
        response = agent.attest(client)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _entry(body: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(base64.b64decode(body["inclusion_proof"]["entry"]))
    return entry


def _operator_load(
    cluster: Cluster, agents: list[DevAgent], stop: threading.Event, failures: list[str]
) -> None:
    """Revoke and allow ``agents``' nodes on every live replica in turn (each an event);
    every node is allowed again at the end."""
    turn = 0
    while not stop.is_set() or turn % (2 * len(agents)):
        alive = cluster.alive
        if not alive:
            return
        replica = alive[turn % len(alive)]
        agent = agents[turn % len(agents)]
        action = ("revoke", "allow")[(turn // len(agents)) % 2]
        turn += 1
        try:
            with replica.client() as client:
                response = client.post(
                    f"/v1/nodes/{agent.node_id}/{action}", headers=cluster.operator()
                )
        except httpx.TransportError:
            turn -= 1  # a replica being killed: again on another
            continue
        if response.status_code != 200:
            failures.append(f"{action} on {replica.port}: {response.status_code} {response.text}")
        time.sleep(0.02)


# --- the tests ------------------------------------------------------------------------------


def test_every_event_is_delivered_once_in_order_by_one_replica(cluster: Cluster) -> None:
    # Events on every replica: attestations (enrolled -> trusted), revocations, allowances.
    for turn, agent in enumerate(cluster.agents):
        _attest(agent, cluster.replicas[turn % 3])
    stop, failures = threading.Event(), []
    load = threading.Thread(target=_operator_load, args=(cluster, cluster.agents, stop, failures))
    load.start()
    time.sleep(1.5)
    stop.set()
    load.join(30)
    assert not failures, failures[:5]

    positions = cluster.positions()
    cluster.wait_delivered(positions, timeout=20)
    deliveries = cluster.receiver.received()
    delivered = [delivery.event_id for delivery in deliveries]
    print(f"\nreplicas: {len(positions)} events, {len(delivered)} deliveries")
    assert len(positions) > 20
    assert positions == list(range(1, len(positions) + 1))
    # Exactly once, in order: the one lease holder delivered, nobody else, nothing twice.
    assert delivered == positions
    assert cluster.deliverer_pid() == cluster.replicas[0].pid
    # Signed with the shared statement key, whichever replica delivered.
    for delivery in deliveries:
        assert verify_signature(cluster.statement_key, delivery.body, delivery.signature)


def test_a_policy_activated_on_one_replica_is_applied_by_all(cluster: Cluster) -> None:
    first, *others = cluster.replicas
    before = [_entry(_attest(cluster.agents[n], replica)) for n, replica in enumerate(others)]
    assert [entry["policy"] for entry in before] == ["test@1", "test@1"]
    document = policy_document("fleet-v2", validity=600)
    with first.client() as client:
        stored = client.put("/v1/policies/fleet-v2", json=document, headers=cluster.operator())
        assert stored.status_code == 200, stored.text
        active = client.put(
            "/v1/active-policy", json={"id": "fleet-v2"}, headers=cluster.operator()
        )
        assert active.status_code == 200, active.text
    # Each other replica notices within policy_refresh_seconds (1 s).
    for number, replica in enumerate(others):
        deadline = time.monotonic() + 5
        while True:
            body = _attest(cluster.agents[number], replica)
            if _entry(body)["policy"] == "fleet-v2@1":
                break
            assert time.monotonic() < deadline, f"replica {replica.port} kept {_entry(body)}"
            time.sleep(0.2)
        with replica.client() as client:
            shown = client.get("/v1/active-policy", headers=cluster.reader())
        assert shown.status_code == 200 and shown.json()["id"] == "fleet-v2", shown.text


def test_concurrent_attestations_on_every_replica_make_one_log(cluster: Cluster) -> None:
    bodies: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def attest(number: int) -> None:
        agent = cluster.agents[number]
        for turn in range(5):
            replica = cluster.replicas[(number + turn) % 3]
            try:
                body = _attest(agent, replica)
            except AssertionError as error:
                errors.append(str(error))
                continue
            with lock:
                bodies.append(body)

    threads = [threading.Thread(target=attest, args=(n,)) for n in range(AGENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert len(bodies) == 5 * AGENTS

    # One log key, the shared one, on every replica.
    for replica in cluster.replicas:
        with replica.client() as client:
            served = client.get("/v1/log/key")
        assert served.text.strip() == cluster.log_key.key_string()
    # Every receipt, from whichever replica, proves its entry in a checkpoint signed by it.
    heads = []
    for body in bodies:
        receipt = Receipt.from_json(body["inclusion_proof"])
        verified = verify_receipt(receipt, [cluster.log_key], origin=ORIGIN)
        assert verified.entry["result_id"] == body["result_id"]
        heads.append((verified.checkpoint.size, verified.checkpoint.root))
    assert len({index for index in (body["log_index"] for body in bodies)}) == len(bodies)
    # Every replica's current checkpoint too; then all of them pairwise consistent: no fork.
    for replica in cluster.replicas:
        with replica.client() as client:
            note = client.get("/v1/log/checkpoint").content
        checkpoint, _ = open_checkpoint(note, [cluster.log_key], origin=ORIGIN)
        heads.append((checkpoint.size, checkpoint.root))
    distinct = sorted(set(heads))
    assert len({size for size, _ in distinct}) == len(distinct), "two roots for one size: a fork"
    with cluster.replicas[0].client() as client:
        for (old_size, old_root), (new_size, new_root) in combinations(distinct, 2):
            answer = client.get(
                "/v1/log/proof/consistency", params={"old": old_size, "new": new_size}
            )
            assert answer.status_code == 200, answer.text
            proof = [base64.b64decode(element) for element in answer.json()["proof"]]
            verify_consistency(old_size, new_size, old_root, new_root, proof)
    print(f"\nreplicas: {len(bodies)} receipts, {len(distinct)} tree heads, all consistent")


def test_the_leader_killed_another_replica_sweeps_and_delivers(cluster: Cluster) -> None:
    leader = next(r for r in cluster.replicas if r.pid == cluster.sweeper_pid())
    assert cluster.deliverer_pid() == leader.pid, "one replica holds both leases"
    survivors = [replica for replica in cluster.replicas if replica is not leader]
    with cluster.engine.connect() as connection:
        term = connection.execute(
            text(f"SELECT term FROM leases WHERE name = '{SWEEPER}'")
        ).scalar_one()
    # A node trusted for 2 s: once it expires, only a sweeper can mark it stale (an event).
    with survivors[0].client() as client:
        brief = policy_document("brief", validity=2)
        for path, body in (("/v1/policies/brief", brief), ("/v1/active-policy", {"id": "brief"})):
            assert client.put(path, json=body, headers=cluster.operator()).status_code == 200
    stale_agent = cluster.agents[0]
    deadline = time.monotonic() + 5
    while _entry(_attest(stale_agent, survivors[0]))["policy"] != "brief@1":
        assert time.monotonic() < deadline
    # The cursor as stored, sampled all along: it must never move backwards.
    samples: list[int] = []
    stop, failures = threading.Event(), []

    def sample() -> None:
        while not stop.is_set():
            with cluster.engine.connect() as connection:
                value = connection.execute(
                    text("SELECT last_event_id FROM webhook_cursors")
                ).scalar_one()
            samples.append(int(value))
            time.sleep(0.05)

    threads = [
        threading.Thread(target=sample),
        threading.Thread(target=_operator_load, args=(cluster, cluster.agents[1:], stop, failures)),
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        assert leader.process is not None
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait()
        killed = time.monotonic()
        # Another replica takes the sweeper lease once the dead one's runs out.
        while cluster.sweeper_pid() not in {replica.pid for replica in survivors}:
            assert time.monotonic() - killed < SWEEPER_LEASE + 5, "no replica took the sweeper"
            time.sleep(0.1)
        took_sweeper = time.monotonic() - killed
        time.sleep(1.0)  # load on the survivors alone
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    # Expect failures only from the killed replica's in-flight calls.
    assert all(str(leader.port) in failure for failure in failures), failures[:5]

    # The new sweeper marked the brief node stale: an event nobody else could have made.
    deadline = time.monotonic() + 10
    while True:
        with cluster.engine.connect() as connection:
            stale = connection.execute(
                text("SELECT count(*) FROM events WHERE node_id = :id AND reason = 'stale'"),
                {"id": stale_agent.node_id},
            ).scalar_one()
        if stale:
            break
        assert time.monotonic() < deadline, "nobody swept after the leader died"
        time.sleep(0.2)
    with cluster.engine.connect() as connection:
        new_term = connection.execute(
            text(f"SELECT term FROM leases WHERE name = '{SWEEPER}'")
        ).scalar_one()
    assert new_term > term

    positions = cluster.positions()
    cluster.wait_delivered(positions, timeout=WEBHOOK_LEASE + 20)
    delivered = cluster.receiver.ids()
    assert set(delivered) == set(positions)  # every event at least once, nothing else
    first_seen = list(dict.fromkeys(delivered))
    assert first_seen == sorted(first_seen)  # in order
    assert cluster.deliverer_pid() in {replica.pid for replica in survivors}
    assert samples and samples == sorted(samples), "the webhook cursor moved backwards"
    duplicates = len(delivered) - len(set(delivered))
    print(
        f"\nreplicas: leader killed; sweeper taken over in {took_sweeper:.1f} s; "
        f"{len(positions)} events, {duplicates} delivered twice"
    )
    with survivors[0].client() as client:  # the next tests run under the fleet policy again
        reset = client.put("/v1/active-policy", json={"id": "fleet-v2"}, headers=cluster.operator())
        assert reset.status_code == 200


def test_nothing_answered_is_lost_when_a_replica_is_killed_under_load(cluster: Cluster) -> None:
    alive = cluster.alive
    assert len(alive) >= 2
    victim, survivor = alive[0], alive[1]
    answered: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def attest(agent: DevAgent, first: Replica) -> None:
        replica = first
        while not stop.is_set():
            try:
                with replica.client() as client:
                    response = agent.attest(client)
            except (httpx.TransportError, AssertionError):
                replica = survivor  # the victim died under this call
                continue
            if response.status_code == 200:
                with lock:
                    answered.append(response.json())

    threads = [
        threading.Thread(target=attest, args=(agent, alive[n % 2]))
        for n, agent in enumerate(cluster.agents)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        with lock:
            before_kill = len(answered)
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert before_kill > 0 and len(answered) > before_kill

    # Every result answered 200, by either replica, is stored: the survivor serves it.
    with survivor.client() as client:
        stored: set[str] = set()
        for agent in cluster.agents:
            page = client.get(
                f"/v1/nodes/{agent.node_id}/results",
                params={"limit": 1000},
                headers=cluster.reader(),
            )
            assert page.status_code == 200, page.text
            stored |= {result["result_id"] for result in page.json()["results"]}
        missing = {body["result_id"] for body in answered} - stored
        assert not missing, f"answered but not stored: {sorted(missing)[:5]}"
        # ... and logged: its entry is in the log the survivor serves (a queue the dead
        # replica left is integrated by another's sequencer).
        deadline = time.monotonic() + 20
        while True:
            logged = _logged_results(client, cluster.reader())
            unlogged = {body["result_id"] for body in answered} - logged
            if not unlogged:
                break
            assert time.monotonic() < deadline, f"answered, never logged: {sorted(unlogged)[:5]}"
            time.sleep(0.3)
    print(f"\nreplicas: {len(answered)} answered ({before_kill} before the kill), all stored")


def _logged_results(client: httpx.Client, headers: dict[str, str]) -> set[str]:
    found: set[str] = set()
    start = 0
    while True:
        page = client.get("/v1/log/entries", params={"start": start}, headers=headers)
        assert page.status_code == 200, page.text
        rows = page.json()["entries"]
        for row in rows:
            entry = json.loads(base64.b64decode(row["entry"]))
            found.add(entry.get("result_id"))
        start = page.json()["end"]
        if start >= page.json()["size"] or not rows:
            return found
