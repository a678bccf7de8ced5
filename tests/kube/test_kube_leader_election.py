"""Leader election over a coordination.k8s.io/v1 Lease (``stockade.kube.leader``) with the
official client against the API emulator: acquire, renew, a second candidate waits, takes
over only after the Lease stayed unchanged for its duration *by its own monotonic clock*
(never by the Lease's timestamps), a 409 loses, a stale leader stops before another can
start, a forged Lease never makes two replicas act, and a released Lease is taken at once.

The last tests run two real ``stockade kube controller`` / ``approve-csrs`` processes
against the emulator and a real verifier: only the leader writes; SIGKILL of the leader
hands over within lease duration + retry; SIGTERM hands over at once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID
from kube_support import T0, FakeClock
from kubernetes import client

from stockade.demo.cluster import stockade_executable
from stockade.errors import InputError
from stockade.kube.leader import (
    DEFAULT_NAMESPACE,
    LeaderElector,
    LeaseConfig,
    default_identity,
    default_namespace,
)
from support.kube_emulator import KubeEmulator
from support.verifier_serve import ServedVerifier, free_port

NS = "stockade"
LEASE = "stockade-node-controller"


class Monotonic:
    """A replica's local monotonic clock (each replica may have its own)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flaky:
    """A CoordinationV1Api whose connection can be cut (a partitioned replica)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.before_replace: Any = None

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("connection refused")

    def read_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.read_namespaced_lease(*args, **kwargs)

    def create_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.create_namespaced_lease(*args, **kwargs)

    def replace_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        return self.inner.replace_namespaced_lease(*args, **kwargs)


@pytest.fixture
def api() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def coordination(api: KubeEmulator) -> Iterator[Any]:
    configuration = client.Configuration()
    configuration.host = api.url
    with client.ApiClient(configuration) as api_client:
        yield client.CoordinationV1Api(api_client)


def elector(
    coordination: Any,
    identity: str,
    clock: Monotonic,
    wall: FakeClock | None = None,
    **timing: float,
) -> LeaderElector:
    config = LeaseConfig(LEASE, NS, identity, **timing)
    return LeaderElector(Flaky(coordination), config, monotonic=clock, wall=wall or FakeClock())


def spec(api: KubeEmulator) -> dict[str, Any]:
    lease = api.lease(LEASE, NS)
    assert lease is not None
    return dict(lease["spec"])


# -- the election, step by step -------------------------------------------------------------


def test_the_first_candidate_creates_the_lease_and_leads(api, coordination):
    clock = Monotonic()
    a = elector(coordination, "a", clock)
    assert not a.is_leader()
    assert a.step() is True
    assert a.is_leader()
    lease = spec(api)
    assert lease["holderIdentity"] == "a"
    assert lease["leaseDurationSeconds"] == 15
    assert lease["leaseTransitions"] == 0
    # MicroTime with six fractional digits (the API server's parser takes nothing else).
    assert lease["acquireTime"] == lease["renewTime"] == "2030-01-01T12:00:00.000001+00:00"
    paths = [(m, p) for m, p, _ in api.requests]
    assert ("POST", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases") in paths


def test_the_leader_renews_in_place(api, coordination):
    clock, wall = Monotonic(), FakeClock()
    a = elector(coordination, "a", clock, wall)
    a.step()
    first = api.lease(LEASE, NS)
    clock.advance(2)
    wall.advance(2)
    assert a.step() is True
    renewed = api.lease(LEASE, NS)
    assert renewed["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    assert renewed["spec"]["acquireTime"] == first["spec"]["acquireTime"]
    assert renewed["spec"]["renewTime"] == "2030-01-01T12:00:02.000001+00:00"
    assert renewed["spec"]["leaseTransitions"] == 0
    assert (
        "PUT",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}",
        "application/json",
    ) in api.requests


def test_leadership_lapses_by_the_local_clock_without_renewals(api, coordination):
    clock = Monotonic()
    a = elector(coordination, "a", clock)
    a.step()
    clock.advance(9.9)
    assert a.is_leader()
    clock.advance(0.1)  # renew deadline (10 s) since the start of the last successful step
    assert not a.is_leader()


def test_a_second_candidate_waits_while_the_leader_renews(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    assert a.step()
    for _ in range(30):  # a minute: the lease keeps changing, so it never expires for b
        assert b.step() is False
        assert not b.is_leader()
        clock.advance(2)
        assert a.step() is True
    assert spec(api)["holderIdentity"] == "a"
    assert b.holder == "a"


def test_takes_over_once_the_lease_stayed_unchanged_for_its_duration(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    # a crashes: it never renews again. b first sees the lease now.
    assert b.step() is False
    clock.advance(14.9)
    assert b.step() is False
    clock.advance(0.1)
    assert b.step() is True
    assert b.is_leader() and not a.is_leader()
    lease = spec(api)
    assert lease["holderIdentity"] == "b"
    assert lease["leaseTransitions"] == 1


@pytest.mark.parametrize("skew", [-86400.0, 86400.0], ids=["leader-clock-a-day-behind", "ahead"])
def test_the_remote_times_are_never_read_as_local_time(api, coordination, skew):
    """The holder's renewTime a day in the past (its clock is behind, or the Lease is old)
    does not let b take over early; a day in the future does not keep b out for a day."""
    clock = Monotonic()
    leader_wall = FakeClock(T0 + timedelta(seconds=skew))
    a = elector(coordination, "a", clock, leader_wall)
    b = elector(coordination, "b", clock, FakeClock())
    a.step()
    assert b.step() is False  # a renewTime a day old is not "expired"
    clock.advance(14)
    assert b.step() is False
    clock.advance(1)
    assert b.step() is True  # a renewTime a day ahead does not hold b off


def test_a_conflicting_write_loses(api, coordination):
    """Two candidates try to take an expired lease: the one whose PUT carries a stale
    resourceVersion gets 409 and does not lead."""
    clock = Monotonic()
    a = elector(coordination, "a", clock)
    b = elector(coordination, "b", clock)
    c = elector(coordination, "c", clock)
    a.step()
    b.step()
    c.step()
    clock.advance(15)
    # b reads the expired lease; before its PUT lands, c takes it.
    b._api.before_replace = c.step
    assert b.step() is False
    assert not b.is_leader()
    assert c.is_leader()
    assert spec(api)["holderIdentity"] == "c"
    assert any(m == "PUT" for m, *_ in api.requests)


def test_a_leader_whose_renewal_conflicts_stops_at_once(api, coordination):
    clock = Monotonic()
    a = elector(coordination, "a", clock)
    a.step()
    a._api.before_replace = lambda: api.write_lease(LEASE, NS, holderIdentity="intruder")
    clock.advance(2)
    assert a.step() is False
    assert not a.is_leader()  # not "until the renew deadline": at once


def test_a_create_race_loses(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    b._api.before_replace = None
    original = b._api.create_namespaced_lease

    def create_after_a(*args: Any, **kwargs: Any) -> Any:
        a.step()
        return original(*args, **kwargs)

    b._api.create_namespaced_lease = create_after_a
    assert b.step() is False  # 409 AlreadyExists
    assert a.is_leader() and not b.is_leader()


def timeline(
    a: LeaderElector, b: LeaderElector, clock: Monotonic, seconds: float, b_first: bool = False
) -> list:
    """Both replicas step every 0.5 s (``b_first``: b steps first); (time, a leads, b leads)
    at every instant between."""
    seen = []
    order = (b, a) if b_first else (a, b)
    for _ in range(int(seconds / 0.25)):
        clock.advance(0.25)
        seen.append((clock.now, a.is_leader(), b.is_leader()))
        if (clock.now * 4) % 2 == 0:
            for replica in order:
                replica.step()
                seen.append((clock.now, a.is_leader(), b.is_leader()))
    return seen


def test_a_partitioned_leader_stops_before_the_other_starts(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    b.step()
    a._api.down = True  # a can no longer reach the API server
    seen = timeline(a, b, clock, 30)
    assert not any(both_a and both_b for _, both_a, both_b in seen)
    a_stopped = min(t for t, leads, _ in seen if not leads)
    b_started = min(t for t, _, leads in seen if leads)
    assert a_stopped <= 1000.0 + 10.0  # renew deadline after its last renewal
    assert b_started >= a_stopped + 4.0  # lease duration - renew deadline of margin
    assert b_started <= 1000.0 + 15.0 + 1.0  # within lease duration + retry


def test_a_lease_forged_to_name_the_standby_is_never_adopted(api, coordination):
    """Someone writes the standby's identity into the lease: the standby treats it as
    anyone else's (it did not write it) and waits it out; the leader sees a change it did
    not make and stops at once. Never both."""
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    b.step()
    api.write_lease(LEASE, NS, holderIdentity="b")
    # b reads it before a does: it must not adopt it while a still leads.
    assert b.step() is False and not b.is_leader()
    assert a.is_leader()
    seen = timeline(a, b, clock, 30, b_first=True)
    assert not any(x and y for _, x, y in seen)
    assert b.is_leader() and spec(api)["leaseTransitions"] == 1  # taken, after the wait
    b_started = min(t for t, _, leads in seen if leads)
    assert b_started >= 1000.0 + 15.0


def test_a_leader_that_sees_a_change_it_did_not_make_stops_at_once(api, coordination):
    clock = Monotonic()
    a = elector(coordination, "a", clock)
    a.step()
    api.write_lease(LEASE, NS, holderIdentity="intruder")
    assert a.step() is False
    assert not a.is_leader()  # without waiting for its renew deadline


def test_a_forged_short_duration_does_not_shorten_the_wait(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    api.write_lease(LEASE, NS, holderIdentity="intruder", leaseDurationSeconds=1)
    assert b.step() is False
    clock.advance(14)
    assert b.step() is False  # its own 15 s, not the lease's 1 s
    assert a.step() is False and not a.is_leader()
    clock.advance(1)
    assert b.step() is True


def test_a_forged_long_duration_keeps_everyone_out(api, coordination):
    """Fail closed: a holder nobody knows with an hour's lease keeps both replicas idle."""
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    api.write_lease(LEASE, NS, holderIdentity="intruder", leaseDurationSeconds=3600)
    for _ in range(100):
        clock.advance(10)
        assert a.step() is False and b.step() is False
    clock.advance(3600)
    assert b.step() is True


def test_release_hands_over_at_once(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    b.step()
    assert a.release() is True
    assert not a.is_leader()
    released = spec(api)
    assert released["holderIdentity"] == "" and released["leaseDurationSeconds"] == 1
    assert b.step() is True
    assert spec(api)["leaseTransitions"] == 1


def test_a_stale_leader_releases_nothing_it_no_longer_holds(api, coordination):
    clock = Monotonic()
    a, b = elector(coordination, "a", clock), elector(coordination, "b", clock)
    a.step()
    b.step()
    clock.advance(15)
    assert b.step() is True
    assert a.release() is False  # 409: the lease is b's now
    assert spec(api)["holderIdentity"] == "b"


def test_an_unreachable_api_server_at_start_leads_nobody(api, coordination):
    clock = Monotonic()
    a = elector(coordination, "a", clock)
    a._api.down = True
    assert a.step() is False and not a.is_leader()


def test_the_timing_must_leave_a_margin():
    for timing in (
        {"lease_duration": 10, "renew_deadline": 10},
        {"renew_deadline": 2, "retry_period": 2},
        {"retry_period": 0},
    ):
        with pytest.raises(InputError):
            LeaseConfig(LEASE, NS, "a", **timing)
    with pytest.raises(InputError):
        LeaseConfig(LEASE, NS, "")


def test_defaults_for_namespace_and_identity(tmp_path):
    assert default_namespace(tmp_path / "absent") == DEFAULT_NAMESPACE
    (tmp_path / "namespace").write_text("stockade-dev\n")
    assert default_namespace(tmp_path / "namespace") == "stockade-dev"
    assert default_identity() != default_identity()


# -- the emulator serves leases as an API server does ---------------------------------------


def test_emulator_leases(api, coordination):
    body = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "x", "leaseDurationSeconds": 5}}
    created = coordination.create_namespaced_lease("ns", body)
    with pytest.raises(client.ApiException) as exists:
        coordination.create_namespaced_lease("ns", body)
    assert exists.value.status == 409
    stale = {"metadata": {"name": "l", "resourceVersion": created.metadata.resource_version}}
    coordination.replace_namespaced_lease("l", "ns", {**stale, "spec": {"holderIdentity": "y"}})
    with pytest.raises(client.ApiException) as conflict:
        coordination.replace_namespaced_lease("l", "ns", {**stale, "spec": {}})
    assert conflict.value.status == 409
    with pytest.raises(client.ApiException) as invalid:
        coordination.replace_namespaced_lease(
            "l", "ns", {"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0}}
        )
    assert invalid.value.status == 422
    assert [i.metadata.name for i in coordination.list_namespaced_lease("ns").items] == ["l"]
    assert coordination.list_namespaced_lease("other").items == []
    with pytest.raises(client.ApiException) as missing:
        coordination.replace_namespaced_lease("nope", "ns", {"metadata": {"name": "nope"}})
    assert missing.value.status == 404
    coordination.delete_namespaced_lease("l", "ns")
    assert api.lease("l", "ns") is None


# -- two real replicas ------------------------------------------------------------------------

# Short timings so a takeover is quick to watch; the same rules as the defaults (15/10/2).
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 3.0, 2.0, 0.4


@pytest.fixture(scope="module")
def verifier(tmp_path_factory) -> Iterator[ServedVerifier]:
    """A real verifier; it knows no node, so every Node is untrusted and every CSR denied."""
    with ServedVerifier(tmp_path_factory.mktemp("leader-verifier") / "data") as served:
        yield served


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: nobody, user: {}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: nobody}}]\n"
    )
    return path


class Replica:
    """One ``stockade kube controller`` / ``approve-csrs`` process."""

    def __init__(self, command: list[str], identity: str, directory: Path) -> None:
        self.identity = identity
        self.port = free_port()
        self.log = directory / f"{identity}.log"
        arguments = [
            *command,
            f"--identity={identity}",
            "--lease-namespace=stockade",
            f"--lease-duration={LEASE_DURATION}",
            f"--renew-deadline={RENEW_DEADLINE}",
            f"--retry-period={RETRY_PERIOD}",
            f"--probe-address=127.0.0.1:{self.port}",
            "--log-format=json",
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                arguments, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def sample(self, name: str, **labels: str) -> float:
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def records(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def until(condition: Any, timeout: float = 20.0, what: str = "") -> float:
    """Poll ``condition``; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def holder(api: KubeEmulator, name: str) -> str:
    lease = api.lease(name, "stockade")
    return str(lease["spec"].get("holderIdentity") or "") if lease else ""


@pytest.fixture
def replicas(tmp_path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop(signal.SIGKILL)


@pytest.mark.tools
def test_two_controllers_one_acts_and_the_other_takes_over(tmp_path, verifier, replicas):
    with KubeEmulator() as api:
        api.add_node("n1", labels={"team": "payments"})
        command = [
            stockade_executable(), "kube", "controller",
            f"--kubeconfig={kubeconfig(tmp_path / 'kubeconfig', api.url)}",
            f"--verifier={verifier.url}", f"--ca={verifier.ca}",
            f"--verifier-key={verifier.verifier_key}",
            f"--token-file={verifier.reader_token_file}",
            "--interval=0.5", "--no-watch",
        ]  # fmt: skip
        a = Replica(command, "replica-a", tmp_path)
        replicas.append(a)
        until(lambda: holder(api, LEASE) == "replica-a", what="a to lead")
        b = Replica(command, "replica-b", tmp_path)
        replicas.append(b)
        labels = lambda: api.node("n1")["metadata"]["labels"]  # noqa: E731
        until(lambda: labels().get("stockade.dev/trusted") == "false", what="the first patch")
        until(lambda: b.get("/readyz")[0] == 200 and a.get("/readyz")[0] == 200, what="ready")
        assert "leading lease stockade/stockade-node-controller" in a.get("/readyz")[1]
        assert "standby" in b.get("/readyz")[1] and "held by replica-a" in b.get("/readyz")[1]

        # The node drifts (someone relabels it): the leader puts it back, the standby never.
        for _ in range(3):
            api.update_node("n1", {"metadata": {"labels": {"stockade.dev/trusted": "true"}}})
            until(lambda: labels()["stockade.dev/trusted"] == "false", what="the leader")
        assert a.sample("stockade_controller_patches_total") >= 4
        assert b.sample("stockade_controller_patches_total") == 0
        assert a.sample("stockade_leader", lease="stockade/stockade-node-controller") == 1
        assert b.sample("stockade_leader", lease="stockade/stockade-node-controller") == 0
        patched = [r for r in a.records() if r["event"] == "node patched"]
        assert patched and all(r["node"] == "n1" and r["action"] == "patch" for r in patched)
        assert not [r for r in b.records() if r["event"] == "node patched"]

        # SIGKILL: no release. b takes over once the lease stayed unchanged for its duration.
        killed = time.monotonic()
        a.stop(signal.SIGKILL)
        api.update_node("n1", {"metadata": {"labels": {"stockade.dev/trusted": "true"}}})
        took = until(lambda: holder(api, LEASE) == "replica-b", what="b to take over") - killed
        assert LEASE_DURATION - RETRY_PERIOD - 0.3 <= took <= LEASE_DURATION + 3 * RETRY_PERIOD + 1
        until(lambda: labels()["stockade.dev/trusted"] == "false", what="b's first patch")
        assert b.sample("stockade_controller_patches_total") >= 1
        assert api.lease(LEASE, "stockade")["spec"]["leaseTransitions"] == 1

        # SIGTERM: b stops acting and releases; c takes over at once (not a lease duration).
        c = Replica(command, "replica-c", tmp_path)
        replicas.append(c)
        until(lambda: c.get("/readyz")[0] == 200, what="c ready")
        stopped = time.monotonic()
        assert b.stop(signal.SIGTERM) == 0
        took = until(lambda: holder(api, LEASE) == "replica-c", what="c to take over") - stopped
        assert took < LEASE_DURATION - RETRY_PERIOD, took
        released = [r for r in b.records() if r["event"] == "released the lease"]
        assert released
        api.update_node("n1", {"metadata": {"labels": {"stockade.dev/trusted": "true"}}})
        until(lambda: labels()["stockade.dev/trusted"] == "false", what="c's patch")
        assert api.node("n1")["metadata"]["labels"]["team"] == "payments"
        for replica in (a, b, c):
            assert "Traceback" not in replica.text(), replica.text()


def kubelet_request(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = Name(
        [
            NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}"),
        ]
    )
    request = CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


@pytest.mark.tools
def test_two_approvers_one_decides_and_the_other_takes_over(tmp_path, verifier, replicas):
    with KubeEmulator() as api:
        command = [
            stockade_executable(), "kube", "approve-csrs",
            f"--kubeconfig={kubeconfig(tmp_path / 'kubeconfig', api.url)}",
            f"--verifier={verifier.url}", f"--ca={verifier.ca}",
            f"--verifier-key={verifier.verifier_key}",
            f"--token-file={verifier.reader_token_file}",
            f"--cluster-ca={verifier.data_dir / 'cluster-ca' / 'ca.pem'}",
            "--interval=0.3",
        ]  # fmt: skip
        a = Replica(command, "approver-a", tmp_path)
        replicas.append(a)
        until(lambda: holder(api, "stockade-csr-approver") == "approver-a", what="a to lead")
        b = Replica(command, "approver-b", tmp_path)
        replicas.append(b)
        until(lambda: b.get("/readyz")[0] == 200, what="b ready")

        def submit(name: str) -> None:
            api.add_csr(
                name,
                request_pem=kubelet_request("n1"),
                signer_name="kubernetes.io/kube-apiserver-client-kubelet",
                usages=["digital signature", "client auth"],
                username="system:node:n1",
            )

        def decided(name: str) -> bool:
            return bool(api.csr(name)["status"].get("conditions"))

        for number in range(3):
            submit(f"first-{number}")
        for number in range(3):
            until(lambda number=number: decided(f"first-{number}"), what="a's decisions")
        # A node the verifier does not know: denied, by the leader alone.
        assert a.sample("stockade_csr_decisions_total", action="deny") == 3
        assert b.sample("stockade_csr_decisions_total", action="deny") == 0
        assert {r["csr"] for r in a.records() if r["event"] == "CSR decided"} == {
            "first-0", "first-1", "first-2",
        }  # fmt: skip
        assert "not enrolled" in api.csr("first-0")["status"]["conditions"][0]["message"]

        killed = time.monotonic()
        a.stop(signal.SIGKILL)
        submit("second")
        took = until(lambda: decided("second"), what="b to decide") - killed
        assert took <= LEASE_DURATION + 3 * RETRY_PERIOD + 1.5
        assert b.sample("stockade_csr_decisions_total", action="deny") == 1
        assert holder(api, "stockade-csr-approver") == "approver-b"
        assert b.stop(signal.SIGTERM) == 0
        assert holder(api, "stockade-csr-approver") == ""  # released
        for replica in (a, b):
            assert "Traceback" not in replica.text(), replica.text()
