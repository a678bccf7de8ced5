"""The dashboard's client-side transparency-log verification (``ui/lib/receipt.js``,
``note.js``, ``merkle.js``) run in the real headless chromium, on a page of the running
verifier (its TLS origin: a secure context, so WebCrypto's SHA-256 and Ed25519 are there),
and held to the Python verifier (``stockade.translog``) as the reference:

- every real receipt of every starting node's results verifies in the browser, bound to its
  own EAR and result, and in Python;
- each tampered variant (one flipped bit in the entry, a proof hash, the root or the
  signature; another key; another origin; another tree size; a proof one hash short or
  long; the EAR of another result; malformed key, note, receipt) fails in the browser at the
  step that checks it, and Python refuses it too, with the matching error;
- a consistency proof between two real checkpoints verifies in both; a forged one fails in
  both;
- for random tree sizes built in Python, every inclusion proof and a sample of consistency
  proofs (with tampered ones) get the same verdict in JavaScript as in Python.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stockade.demo.cluster import wait_for
from stockade.translog import merkle
from stockade.translog.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    parse_note,
    sign_checkpoint,
)
from stockade.translog.errors import ProofError, TranslogError
from stockade.translog.receipt import Receipt, check_result_entry, verify_receipt
from support.browser import headless_chromium

pytestmark = pytest.mark.tools

# The Python error (class name) each failing step of verifyReceipt corresponds to.
STEP_ERRORS: Mapping[str, set[str]] = {
    "key": {"MalformedKey"},
    "receipt": {"MalformedReceipt"},
    "note": {"MalformedNote"},
    "signature": {"BadSignature", "NotEnoughSignatures"},
    "checkpoint": {"MalformedNote"},
    "origin": {"NoteRejected"},
    "tree_size": {"ProofError"},
    "inclusion": {"ProofError"},
    "entry": {"MalformedEntry"},
    "ear": {"EntryMismatch"},
    "result": {"EntryMismatch", "MalformedReceipt"},
}

# Runs `body` (an async function body; its arguments are `args`) in the page and returns
# its JSON-encoded value, or the error it threw. The driver evaluates this script itself
# (so the page's CSP does not apply to it); the modules are imported from the verifier.
_WRAPPER = """
const done = arguments[arguments.length - 1];
const args = Array.from(arguments).slice(0, -1);
(async () => {
%s
})().then(
  (value) => done({value: JSON.stringify(value === undefined ? null : value)}),
  (error) => done({error: String((error && error.stack) || error)}),
);
"""


def run_js(browser: Any, body: str, *args: Any) -> Any:
    answer = browser.execute_async_script(_WRAPPER % body, *args)
    assert "error" not in answer, answer["error"]
    return json.loads(answer["value"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[index % len(changed)] ^= 1 << bit
    return bytes(changed)


# -- the fleet's real receipts --------------------------------------------------------


@pytest.fixture(scope="module")
def browser(browser_or_skip: None, fleet: Any) -> Iterator[Any]:
    """Chromium on the verifier's own page (nothing signed in: the modules and the log's
    proofs are public)."""
    with headless_chromium() as driver:
        driver.set_script_timeout(120)
        driver.get(fleet.url + "/ui/")
        yield driver


@pytest.fixture(scope="module")
def log_key(fleet: Any) -> str:
    with fleet.client() as client:
        answer = client.request("GET", "/v1/log/key", format="json")
    key = str(answer["key"])
    assert NoteVerifier.from_key_string(key).name == answer["origin"]
    return key


@pytest.fixture(scope="module")
def results(fleet: Any) -> list[dict[str, Any]]:
    """The latest three results of each starting node, each with its receipt."""
    found: list[dict[str, Any]] = []
    with fleet.client() as client:
        for name in ("node-a", "node-b", "node-c"):
            found += client.results(name, limit=3)
    assert len(found) >= 3
    for result in found:
        assert result["inclusion_proof"] is not None, result["result_id"]
        assert result["inclusion_proof"]["checkpoint"]
    return found


def js_verify(browser: Any, cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """verifyReceipt for each case ({receipt, key, options}), in one round trip."""
    verdicts: list[dict[str, Any]] = run_js(
        browser,
        """
        const {verifyReceipt} = await import("/ui/assets/lib/receipt.js");
        const out = [];
        for (const c of args[0]) out.push(await verifyReceipt(c.receipt, c.key, c.options || {}));
        return out;
        """,
        list(cases),
    )
    return verdicts


def python_verdict(
    receipt: Any, key: str, *, ear: str | None = None, result: Mapping[str, Any] | None = None
) -> str:
    """What ``stockade log verify`` decides: "ok", or the error's class name."""
    try:
        verifier = NoteVerifier.from_key_string(key)
        verified = verify_receipt(
            Receipt.from_json(receipt), [verifier], required=[verifier.name], origin=verifier.name
        )
        if ear is not None:
            check_result_entry(
                verified.entry, {"result_id": verified.entry.get("result_id"), "ear": ear}
            )
        if result is not None:
            check_result_entry(verified.entry, result)
    except TranslogError as error:
        return type(error).__name__
    return "ok"


def test_real_receipts_verify_in_the_browser_and_in_python(
    browser: Any, log_key: str, results: list[dict[str, Any]]
) -> None:
    cases = [
        {"receipt": r["inclusion_proof"], "key": log_key, "options": {"ear": r["ear"], "result": r}}
        for r in results
    ]
    verdicts = js_verify(browser, cases)
    for result, verdict in zip(results, verdicts, strict=True):
        assert verdict["ok"] is True, (result["result_id"], verdict)
        assert verdict["error"] is None
        names = [step["name"] for step in verdict["steps"]]
        assert names == [
            "key", "receipt", "note", "signature", "checkpoint", "origin", "tree_size",
            "inclusion", "entry", "ear", "result",
        ]  # fmt: skip
        assert all(step["ok"] for step in verdict["steps"])
        assert verdict["entry"]["result_id"] == result["result_id"]
        assert verdict["checkpoint"]["size"] == str(result["inclusion_proof"]["tree_size"])
        assert (
            python_verdict(result["inclusion_proof"], log_key, ear=result["ear"], result=result)
            == "ok"
        )
    # The bare receipt (no EAR, no result) verifies too: the steps stop at the entry.
    (bare,) = js_verify(browser, [{"receipt": results[0]["inclusion_proof"], "key": log_key}])
    assert bare["ok"] and bare["steps"][-1]["name"] == "entry"
    # A receipt as JSON text is read the same way.
    (text,) = js_verify(
        browser, [{"receipt": json.dumps(results[0]["inclusion_proof"]), "key": log_key}]
    )
    assert text["ok"], text


def _with_note_root_flipped(note: str) -> str:
    text, _, signatures = note.partition("\n\n")
    lines = text.split("\n")
    lines[2] = b64(flip(base64.b64decode(lines[2]), 7, 3))
    return "\n".join(lines) + "\n\n" + signatures


def _with_signature_flipped(note: str) -> str:
    text, _, signatures = note.partition("\n\n")
    dash_name, blob = signatures.rstrip("\n").rsplit(" ", 1)
    raw = base64.b64decode(blob)
    return f"{text}\n\n{dash_name} {b64(raw[:4] + flip(raw[4:], 20, 5))}\n"


def _resigned(note: str, signer: NoteSigner) -> str:
    """The same checkpoint body, signed by ``signer`` only."""
    parsed = parse_note(note.encode())
    return sign_checkpoint(Checkpoint.parse(parsed.text), [signer]).decode()


Case = tuple[str, Any, str, dict[str, Any], str]  # what, receipt, key, options, failing step


def tampered_cases(results: list[dict[str, Any]], log_key: str) -> list[Case]:
    """Each tampered variant of a real receipt, with the step that must refuse it."""
    result = results[0]
    other = next(r for r in results if r["result_id"] != result["result_id"])
    good = result["inclusion_proof"]
    origin = NoteVerifier.from_key_string(log_key).name
    entry = base64.b64decode(good["entry"])
    proof = list(good["proof"])
    assert proof, "a real log of several results has a non-empty audit path"
    impostor = NoteSigner.generate(origin)  # the log's name, another key
    elsewhere = NoteSigner.generate("elsewhere.example/log")
    name, key_id, key_b64 = log_key.split("+", 2)
    note = good["checkpoint"]
    other_status = "warning" if result["status"] == "affirming" else "affirming"
    cases: list[Case] = []

    def case(what: str, step: str, key: str = log_key, **changes: Any) -> None:
        options = changes.pop("options", {})
        receipt = changes.pop("receipt", None)
        cases.append(
            (what, receipt if receipt is not None else {**good, **changes}, key, options, step)
        )

    def flipped_hash(text: str, byte: int, bit: int) -> str:
        return b64(flip(base64.b64decode(text), byte, bit))

    case("entry: one bit flipped", "inclusion", entry=b64(flip(entry, 30, 1)))
    case(
        "proof: a bit of the first hash",
        "inclusion",
        proof=[flipped_hash(proof[0], 5, 0), *proof[1:]],
    )
    case(
        "proof: a bit of the last hash",
        "inclusion",
        proof=[*proof[:-1], flipped_hash(proof[-1], 31, 7)],
    )
    case("checkpoint: root flipped", "signature", checkpoint=_with_note_root_flipped(note))
    case("checkpoint: signature flipped", "signature", checkpoint=_with_signature_flipped(note))
    case("another key with the log's name", "signature", impostor.verifier.key_string())
    case(
        "re-signed by an impostor of the same name",
        "signature",
        checkpoint=_resigned(note, impostor),
    )
    case(
        "another origin: a genuine signature by a key of another name",
        "origin",
        elsewhere.verifier.key_string(),
        checkpoint=_resigned(note, elsewhere),
    )
    case("tree_size: one more", "tree_size", tree_size=good["tree_size"] + 1)
    case("tree_size: one less", "tree_size", tree_size=good["tree_size"] - 1)
    case("proof: truncated", "inclusion", proof=proof[:-1])
    case("proof: an extra hash", "inclusion", proof=[*proof, proof[0]])
    case("proof: empty", "inclusion", proof=[])
    case("log_index: the neighbour's", "inclusion", log_index=good["log_index"] ^ 1)
    case("log_index: beyond the tree", "inclusion", log_index=good["tree_size"])
    case("ear: another result's", "ear", options={"ear": other["ear"]})
    case(
        "result: this receipt claimed for another result",
        "result",
        options={"result": {**other, "inclusion_proof": good}},
    )
    case(
        "result: another result's EAR",
        "result",
        options={"result": {**result, "ear": other["ear"]}},
    )
    case("result: another status", "result", options={"result": {**result, "status": other_status}})
    case("key: wrong key id", "key", f"{name}+{int(key_id, 16) ^ 1:08x}+{key_b64}")
    case("key: not a key", "key", "not a key")
    case(
        "receipt: no checkpoint",
        "receipt",
        receipt={k: v for k, v in good.items() if k != "checkpoint"},
    )
    case("receipt: not canonical base64", "receipt", entry=good["entry"].rstrip("=") + "\n")
    case("receipt: log_index a string", "receipt", log_index=str(good["log_index"]))
    case("receipt: proof not a list", "receipt", proof=proof[0])
    case("receipt: a list", "receipt", receipt=[good])
    case("note: no signature block", "note", checkpoint=note.partition("\n\n")[0] + "\n")
    case("note: a control character", "note", checkpoint=note.replace("\n", "\r\n", 1))
    return cases


def test_tampered_receipts_fail_at_the_right_step_in_both_implementations(
    browser: Any, log_key: str, results: list[dict[str, Any]]
) -> None:
    cases = tampered_cases(results, log_key)
    verdicts = js_verify(
        browser, [{"receipt": r, "key": k, "options": o} for _, r, k, o, _ in cases]
    )
    for (what, receipt, key, options, step), verdict in zip(cases, verdicts, strict=True):
        assert verdict["ok"] is False, (what, verdict)
        failing = verdict["steps"][-1]
        assert failing["name"] == step and failing["ok"] is False, (what, verdict["steps"])
        assert all(s["ok"] for s in verdict["steps"][:-1]), (what, verdict["steps"])
        assert verdict["error"].startswith(f"{step}: "), (what, verdict["error"])
        python = python_verdict(receipt, key, ear=options.get("ear"), result=options.get("result"))
        assert python in STEP_ERRORS[step], (what, python, verdict["error"])


def test_a_receipt_checks_against_a_newer_checkpoint_only_with_a_proof_for_its_size(
    browser: Any, fleet: Any, log_key: str, results: list[dict[str, Any]]
) -> None:
    """A receipt checked against another checkpoint (the ``checkpoint`` option) needs a proof
    for that checkpoint's size, as in Python: the old proof fails at tree_size; a fresh
    proof for the new size verifies in both."""
    receipt = results[0]["inclusion_proof"]
    with fleet.client() as client:

        def grown() -> dict[str, Any] | None:
            head: dict[str, Any] = client.request("GET", "/v1/log/checkpoint", format="json")
            return head if head["size"] > receipt["tree_size"] else None

        head = wait_for(grown, 30, "the log to grow past the receipt's tree")
        fresh = client.request(
            "GET", "/v1/log/proof/inclusion", index=receipt["log_index"], size=head["size"]
        )
    stale, current = js_verify(
        browser,
        [
            {"receipt": receipt, "key": log_key, "options": {"checkpoint": head["checkpoint"]}},
            {"receipt": fresh, "key": log_key, "options": {"checkpoint": head["checkpoint"]}},
        ],
    )
    assert stale["ok"] is False and stale["steps"][-1]["name"] == "tree_size", stale
    assert current["ok"] is True, current
    verifier = NoteVerifier.from_key_string(log_key)
    with pytest.raises(ProofError):
        verify_receipt(
            Receipt.from_json(receipt), [verifier], checkpoint=head["checkpoint"].encode()
        )
    verify_receipt(Receipt.from_json(fresh), [verifier], checkpoint=head["checkpoint"].encode())


# -- consistency between two real checkpoints -------------------------------------------


def test_consistency_between_real_checkpoints(browser: Any, fleet: Any, log_key: str) -> None:
    with fleet.client() as client:
        first: dict[str, Any] = client.request("GET", "/v1/log/checkpoint", format="json")

        def grown() -> dict[str, Any] | None:
            head: dict[str, Any] = client.request("GET", "/v1/log/checkpoint", format="json")
            return head if head["size"] > first["size"] else None

        second = wait_for(grown, 30, "a new checkpoint")
        proof: dict[str, Any] = client.request(
            "GET", "/v1/log/proof/consistency", old=first["size"], new=second["size"]
        )
    hashes = [base64.b64decode(h) for h in proof["proof"]]
    old_root, new_root = base64.b64decode(first["root"]), base64.b64decode(second["root"])
    merkle.verify_consistency(first["size"], second["size"], old_root, new_root, hashes)

    old, new, listed = first["checkpoint"], second["checkpoint"], proof["proof"]
    impostor = NoteSigner.generate(NoteVerifier.from_key_string(log_key).name).verifier
    # (what, old note, new note, proof, key, the step that must fail or None)
    cases: list[tuple[str, str, str, Any, str | None, str | None]] = [
        ("genuine", old, new, proof, log_key, None),
        ("genuine, proof as a list", old, new, listed, log_key, None),
        ("genuine, no key: notes parsed only", old, new, proof, None, None),
        ("a flipped proof hash", old, new, [b64(flip(hashes[0], 3, 2)), *listed[1:]], log_key,
         "consistency"),
        ("a proof one hash short", old, new, listed[:-1], log_key, "consistency"),
        ("a proof for other sizes", old, new, {**proof, "old_size": first["size"] - 1}, log_key,
         "proof"),
        ("old and new swapped", new, old, listed, log_key, "consistency"),
        ("the new root flipped", old, _with_note_root_flipped(new), proof, log_key,
         "new checkpoint"),
        ("another key", old, new, proof, impostor.key_string(), "old checkpoint"),
    ]  # fmt: skip
    verdicts = run_js(
        browser,
        """
        const {verifyConsistency} = await import("/ui/assets/lib/receipt.js");
        const out = [];
        for (const [, older, newer, proof, key] of args[0]) {
          out.push(await verifyConsistency(older, newer, proof, key));
        }
        return out;
        """,
        [list(case) for case in cases],
    )
    for (what, older, newer, given_proof, _key, step), verdict in zip(cases, verdicts, strict=True):
        if step is None:
            assert verdict["ok"] is True, (what, verdict)
            assert verdict["steps"][-1]["name"] == "consistency"
            continue
        assert verdict["ok"] is False, (what, verdict)
        assert verdict["steps"][-1]["name"] == step, (what, verdict["steps"])
        if step == "consistency":  # the same proof, refused by Python too
            old_head = Checkpoint.parse(parse_note(older.encode()).text)
            new_head = Checkpoint.parse(parse_note(newer.encode()).text)
            listed = given_proof["proof"] if isinstance(given_proof, dict) else given_proof
            with pytest.raises(ProofError):
                merkle.verify_consistency(
                    old_head.size, new_head.size, old_head.root, new_head.root,
                    [base64.b64decode(h) for h in listed],
                )  # fmt: skip


# -- property: JavaScript agrees with Python on trees built in Python -------------------


def _tree(size: int, seed: int) -> tuple[list[bytes], Callable[..., Any]]:
    rng = random.Random(seed)
    entries = [rng.randbytes(rng.randrange(0, 40)) for _ in range(size)]
    stored: dict[tuple[int, int], bytes] = {}
    hashes = [merkle.leaf_hash(entry) for entry in entries]
    stored.update({(0, index): hashed for index, hashed in enumerate(hashes)})
    rows, _ = merkle.compact_append(0, [], hashes)
    stored.update({(level, index): hashed for level, index, hashed in rows})

    def read(ids: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return {node: stored[node] for node in ids if node in stored}

    return entries, read


def _python_ok(check: Callable[[], Any]) -> bool:
    try:
        check()
    except ProofError:
        return False
    return True


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(size=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
@example(size=1, seed=0)
@example(size=2, seed=1)
@example(size=3, seed=2)
@example(size=7, seed=3)
@example(size=8, seed=4)
@example(size=9, seed=5)
@example(size=64, seed=6)
@example(size=129, seed=7)
def test_javascript_agrees_with_python_on_random_trees(browser: Any, size: int, seed: int) -> None:
    entries, read = _tree(size, seed)
    rng = random.Random(seed ^ 0x5EED)
    root = merkle.root_hash(size, read)
    assert root == merkle.root_of(entries)
    # Every inclusion proof, genuine: JS computes the same root from it.
    inclusion = [
        {
            "entry": b64(entry),
            "index": index,
            "proof": [b64(h) for h in merkle.inclusion_proof(index, size, read)],
        }
        for index, entry in enumerate(entries)
    ]
    # Tampered ones (another index, a hash dropped or added, a bit flipped): same verdict.
    checks: list[dict[str, Any]] = []
    for _ in range(12):
        index = rng.randrange(size)
        proof = merkle.inclusion_proof(index, size, read)
        kind = rng.choice(["index", "drop", "add", "flip", "size", "genuine"])
        claimed_index, claimed_size = index, size
        if kind == "index":
            claimed_index = rng.randrange(size)
        elif kind == "drop" and proof:
            proof = proof[: rng.randrange(len(proof))]
        elif kind == "add":
            proof = [*proof, rng.randbytes(32)]
        elif kind == "flip" and proof:
            where = rng.randrange(len(proof))
            proof[where] = flip(proof[where], rng.randrange(32), rng.randrange(8))
        elif kind == "size":
            claimed_size = rng.randrange(1, size + 3)
        leaf = merkle.leaf_hash(entries[index])

        def python_check(
            leaf: bytes = leaf,
            i: int = claimed_index,
            n: int = claimed_size,
            p: list[bytes] = proof,
        ) -> None:
            merkle.verify_inclusion(leaf, i, n, p, root)

        checks.append(
            {
                "leaf": b64(leaf), "index": claimed_index, "size": claimed_size,
                "proof": [b64(h) for h in proof], "python": _python_ok(python_check),
            }
        )  # fmt: skip
    # Consistency proofs from random older sizes, genuine and tampered.
    consistency: list[dict[str, Any]] = []
    for _ in range(8):
        old = rng.randrange(0, size + 1)
        proof = merkle.consistency_proof(old, size, read)
        old_root = merkle.root_hash(old, read)
        kind = rng.choice(["genuine", "genuine", "flip", "old_size", "drop", "root"])
        claimed_old = old
        if kind == "flip" and proof:
            where = rng.randrange(len(proof))
            proof[where] = flip(proof[where], rng.randrange(32), rng.randrange(8))
        elif kind == "old_size":
            claimed_old = rng.randrange(0, size + 1)
        elif kind == "drop" and proof:
            proof = proof[:-1]
        elif kind == "root":
            old_root = flip(old_root, 0, 0)

        def python_consistency(
            m: int = claimed_old, o: bytes = old_root, p: list[bytes] = proof
        ) -> None:
            merkle.verify_consistency(m, size, o, root, p)

        consistency.append(
            {
                "old": claimed_old, "old_root": b64(old_root), "proof": [b64(h) for h in proof],
                "python": _python_ok(python_consistency),
            }
        )  # fmt: skip
    answer = run_js(
        browser,
        """
        const m = await import("/ui/assets/lib/merkle.js");
        const {decodeBase64} = await import("/ui/assets/lib/note.js");
        const d = (t) => decodeBase64(t, "test");
        const hex = m.toHex;
        const [size, root, inclusion, checks, consistency] = args;
        const verdict = async (f) => { try { await f(); return true; } catch (e) {
          if (e.name !== "ProofError") throw e; return false; } };
        const roots = [];
        for (const c of inclusion) {
          const leaf = await m.leafHash(d(c.entry));
          roots.push(hex(await m.rootFromInclusionProof(leaf, c.index, size, c.proof.map(d))));
        }
        const inc = [];
        for (const c of checks) {
          const proof = c.proof.map(d);
          const check = () => m.verifyInclusion(d(c.leaf), c.index, c.size, proof, d(root));
          inc.push(await verdict(check));
        }
        const con = [];
        for (const c of consistency) {
          const proof = c.proof.map(d);
          const check = () => m.verifyConsistency(c.old, size, d(c.old_root), d(root), proof);
          con.push(await verdict(check));
        }
        return {roots, inc, con};
        """,
        size, b64(root), inclusion, checks, consistency,
    )  # fmt: skip
    assert answer["roots"] == [root.hex()] * size
    assert answer["inc"] == [c["python"] for c in checks], checks
    assert answer["con"] == [c["python"] for c in consistency], consistency
