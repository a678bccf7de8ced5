"""``stockade verifier serve --workers 2``: two processes on one socket, each a replica.

Results from both are stored and logged in one consistent log; each worker remembers the
checkpoints it signed in a state directory of its own; a worker that dies takes the verifier
down (so its supervisor restarts it whole), and SIGTERM stops every worker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from verifier_support import DevAgent, operator_headers, policy_document, reader_headers

from stockade.translog.checkpoint import NoteVerifier, open_checkpoint
from stockade.translog.receipt import Receipt, verify_receipt
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier, ek_ca_files

pytestmark = [pytest.mark.tools, pytest.mark.swtpm]

ORIGIN = "workers.test/log"


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.fixture
def served(tmp_path: Path, ek_ca, database_url: str | None):
    verifier = ServedVerifier(
        tmp_path / "verifier",
        ek_ca_files(ek_ca),
        database=database_url,
        # As shipped but for the appraiser: the tests' quote-only one trusts a dev swtpm.
        prelude=QUOTE_ONLY_APPRAISER,
        extra=("--workers", "2", "--log-origin", ORIGIN),
    )
    verifier.start()
    document = policy_document()
    with verifier.httpx_client() as client:
        stored = client.put(
            f"/v1/policies/{document['id']}",
            json=document,
            headers=operator_headers(verifier.data_dir),
        )
    assert stored.status_code in (200, 201), stored.text
    yield verifier
    verifier.stop()


def test_two_workers_serve_one_log_each_remembering_its_checkpoints(served, software_tpm):
    assert served.process is not None
    workers = _children(served.process.pid)
    assert len(workers) == 2, served.output()
    agent = DevAgent.create(software_tpm)
    with served.httpx_client(timeout=20) as client:
        agent.enroll(client, "node-workers")
    state = served.data_dir / "state"
    remembered = (state / "latest-checkpoint", state / "worker-1" / "latest-checkpoint")
    receipts: list[Receipt] = []
    # A fresh connection each time: the kernel hands each to whichever worker accepts it.
    for _ in range(40):
        with served.httpx_client(timeout=20) as client:
            response = agent.attest(client)
        assert response.status_code == 200, response.text
        receipts.append(Receipt.from_json(response.json()["inclusion_proof"]))
        if len(receipts) >= 6 and all(path.exists() for path in remembered):
            break
    assert all(path.exists() for path in remembered), "one worker served every attestation"
    key = NoteVerifier.from_key_string(
        (served.data_dir / "keys" / "log-key.pub").read_text().strip()
    )
    # Entry 0 is the operator storing the policy (an operator action); the results follow.
    assert sorted(receipt.log_index for receipt in receipts) == list(range(1, len(receipts) + 1))
    for receipt in receipts:
        verify_receipt(receipt, [key], origin=ORIGIN)
    # Both workers signed heads of the one log: each remembered checkpoint is a prefix of the
    # newest receipt's tree.
    newest = max(receipts, key=lambda receipt: receipt.tree_size)
    with served.httpx_client(timeout=20) as client:
        for path in remembered:
            checkpoint, _ = open_checkpoint(path.read_bytes(), [key], origin=ORIGIN)
            assert checkpoint.size <= newest.tree_size
            proof = client.get(
                "/v1/log/proof/consistency",
                params={"old": checkpoint.size, "new": newest.tree_size},
                headers=reader_headers(served.data_dir),
            )
            assert proof.status_code == 200, proof.text


def test_a_dead_worker_takes_the_verifier_down_and_sigterm_stops_all(served, tmp_path):
    assert served.process is not None
    first, second = _children(served.process.pid)
    os.kill(first, signal.SIGKILL)
    assert served.process.wait(30) != 0
    deadline = time.monotonic() + 20
    while _alive(second) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(second)
    # Started again, then stopped: every worker goes with the parent.
    served.start()
    workers = _children(served.process.pid)
    assert len(workers) == 2
    assert served.stop() == 0
    assert not any(_alive(worker) for worker in workers)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/v1/health", verify=False, timeout=2)
