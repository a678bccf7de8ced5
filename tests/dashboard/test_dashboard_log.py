"""The dashboard's transparency-log page (``#/log``) in the real headless chromium against the
running fleet: the current checkpoint verified in the browser under the served key (or the
one the auditor pins), the checkpoints this browser saw checked for consistency (a forked log
shown loudly), and the receipt checker, used the way a person uses it: typing into the
labelled textarea and pressing Check from the keyboard. No request leaves the verifier's
origin, no script or CSP error reaches the console, and the browser keeps nothing but
checkpoints."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from stockade.translog.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    sign_checkpoint,
)
from stockade.translog.keys import load_signer
from support.browser import (
    console_errors,
    foreign_requests,
    headless_chromium,
    login,
    requests_seen,
    wait_ready,
    wait_until,
)
from support.cli import run_stockade

pytestmark = pytest.mark.tools

STORAGE_KEY = "stockade.log.checkpoints"


class LogPage:
    """The browser, signed in, with every request and console error it saw kept."""

    def __init__(self, driver: Any, fleet: Any) -> None:
        self.driver = driver
        self.fleet = fleet
        self.urls: list[str] = []
        self.errors: list[str] = []

    def drain(self) -> None:
        self.urls += requests_seen(self.driver)
        self.errors += console_errors(self.driver)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def open(self) -> None:
        """Go to another page and back, so the log page renders afresh."""
        self.driver.execute_script("window.location.hash = '#/'")
        wait_until(lambda: self.all('[data-page="overview"]'), 15, "the overview")
        wait_ready(self.driver)
        self.driver.execute_script("window.location.hash = '#/log'")
        wait_until(lambda: self.all('[data-page="log"]'), 15, "the log page")
        wait_ready(self.driver)

    def verified(self) -> str:
        return str(self.css("#checkpoint").get_attribute("data-verified"))

    def enter(self, selector: str, text: str, *, keystrokes: bool) -> None:
        """Put ``text`` in a field as a person would: key by key, or (for long documents)
        inserted at the caret as a paste is (``Input.insertText``: the browser's own input
        path, with its input events)."""
        field = self.css(selector)
        field.clear()
        if not text:
            return
        if keystrokes:
            field.send_keys(text)
        else:
            field.click()
            self.driver.execute_cdp_cmd("Input.insertText", {"text": text})
        assert field.get_attribute("value") == text

    def check_receipt(self, text: str, ear: str = "", *, keystrokes: bool = False) -> str:
        """Fill the checker and press Check with the keyboard; the verdict."""
        from selenium.webdriver.common.keys import Keys

        self.enter("#receipt-input", text, keystrokes=keystrokes)
        self.enter("#receipt-ear", ear, keystrokes=False)
        self.css("#receipt-check-button").send_keys(Keys.ENTER)
        return str(
            wait_until(
                lambda: self.css("#receipt-result").get_attribute("data-receipt-check"),
                30,
                "the receipt check's verdict",
            )
        )

    def steps(self) -> list[tuple[str, str]]:
        return [
            (str(li.get_attribute("data-step")), str(li.get_attribute("data-ok")))
            for li in self.all("#receipt-result li[data-step]")
        ]


@pytest.fixture(scope="module")
def page(browser_or_skip: None, fleet: Any) -> Iterator[LogPage]:
    with headless_chromium() as driver:
        driver.set_script_timeout(60)
        login(driver, fleet.url, fleet.reader_token())
        wait_ready(driver)
        # The shell's probe before signing in is answered 401 (that is how it knows to show
        # the form): not this page's doing.
        console_errors(driver)
        page = LogPage(driver, fleet)
        page.open()
        yield page
        page.drain()
        assert foreign_requests(page.urls, fleet.url) == []
        assert page.errors == []


@pytest.fixture(scope="module")
def log_key(fleet: Any) -> str:
    with fleet.client() as client:
        return str(client.request("GET", "/v1/log/key", format="json")["key"])


def _flip_entry(receipt: dict[str, Any]) -> dict[str, Any]:
    entry = bytearray(base64.b64decode(receipt["entry"]))
    entry[25] ^= 0x04
    return {**receipt, "entry": base64.b64encode(bytes(entry)).decode()}


def test_the_log_page_shows_the_checkpoint_verified_in_the_browser(
    page: LogPage, fleet: Any, log_key: str
) -> None:
    verifier = NoteVerifier.from_key_string(log_key)
    assert page.css('[data-page="log"] h1').text == "Transparency log"
    assert page.verified() == "ok"
    # What the page shows is the signed note it verified, as Python reads it.
    note = page.driver.execute_script(
        "return document.querySelector('#checkpoint details pre').textContent"
    )
    head, _ = open_checkpoint(note.encode(), [verifier], origin=verifier.name)
    with fleet.client() as client:
        served = client.request("GET", "/v1/log/checkpoint", format="json")
    assert page.css("#checkpoint-origin").text == head.origin == verifier.name
    assert int(page.css("#checkpoint").get_attribute("data-size")) == head.size > 0
    assert head.size <= served["size"]  # the log only grew since
    assert page.css("#checkpoint-root").text == base64.b64encode(head.root).decode()
    assert "verified in this browser" in page.css("#checkpoint-signature").text
    assert page.css("#log-key-id").text == f"{verifier.key_id:08x}"
    assert page.css("#log-key-string").text == log_key
    assert page.css("[data-key-source]").get_attribute("data-key-source") == "served"
    # The history holds the checkpoint, first seen or proved consistent with one before.
    rows = page.all("#checkpoint-history tbody tr")
    assert rows and rows[0].get_attribute("data-check") in ("first", "consistent")
    # Every field is labelled; the verdict is a live region.
    for field in page.all('[data-page="log"] textarea, [data-page="log"] input'):
        field_id = field.get_attribute("id")
        assert page.all(f'label[for="{field_id}"]'), field_id
    assert page.css("#receipt-summary").get_attribute("aria-live") == "polite"
    page.drain()


def test_the_receipt_checker_says_ok_for_a_real_receipt_and_failed_for_a_tampered_one(
    page: LogPage, fleet: Any
) -> None:
    with fleet.client() as client:
        result, older = client.results("node-a", limit=2)
        other = client.results("node-c", limit=1)[0]
    receipt = result["inclusion_proof"]

    assert page.check_receipt(json.dumps(receipt), keystrokes=True) == "ok"
    steps = page.steps()
    assert [name for name, _ in steps] == [
        "key", "receipt", "note", "signature", "checkpoint", "origin", "tree_size", "inclusion",
        "entry",
    ]  # fmt: skip
    assert all(ok == "true" for _, ok in steps)
    assert page.css("#receipt-summary").text.startswith("Verified")

    assert page.check_receipt(json.dumps(_flip_entry(receipt))) == "failed"
    assert page.steps()[-1] == ("inclusion", "false")
    assert page.css("#receipt-summary").text.startswith("Not verified: inclusion:")

    # A whole result: the entry must be that result's, and bind the EAR given.
    assert page.check_receipt(json.dumps(result), ear=result["ear"]) == "ok"
    assert page.steps()[-2:] == [("ear", "true"), ("result", "true")]
    assert page.check_receipt(json.dumps(result), ear=other["ear"]) == "failed"
    assert page.steps()[-1] == ("ear", "false")
    assert page.check_receipt(json.dumps({**older, "inclusion_proof": receipt})) == "failed"
    assert page.steps()[-1] == ("result", "false")

    assert page.check_receipt("{not json", keystrokes=True) == "failed"
    assert page.steps() == [("input", "false")]
    page.drain()


def test_the_checker_takes_the_cli_export(page: LogPage, fleet: Any) -> None:
    """``stockade results show --format json``, pasted as printed: every result checked."""
    shown = run_stockade(
        "results", "show", "node-b", "--limit", "2", "--verifier", fleet.url,
        "--ca", fleet.verifier.ca, "--token-file", fleet.verifier.reader_token_file,
        "--verifier-key", fleet.verifier.verifier_key, "--format", "json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    export = json.loads(shown.stdout)
    assert len(export["results"]) == 2
    assert page.check_receipt(json.dumps(export)) == "ok"
    assert len(page.all("#receipt-result .receipt-verdict[data-verdict=ok]")) == 2
    first = export["results"][0]
    export["results"][1]["inclusion_proof"] = _flip_entry(first["inclusion_proof"])
    assert page.check_receipt(json.dumps(export)) == "failed"
    verdicts = page.all("#receipt-result .receipt-verdict")
    assert [v.get_attribute("data-verdict") for v in verdicts] == ["ok", "failed"]
    page.drain()


def test_a_pinned_key_replaces_the_served_one(page: LogPage, log_key: str) -> None:
    impostor = NoteSigner.generate(NoteVerifier.from_key_string(log_key).name).verifier
    field = page.css("#pinned-key")
    field.clear()
    field.send_keys("not a key")
    page.css("#pin-form button[type=submit]").click()
    wait_until(lambda: "Not a log key" in page.css("#pinned-key-status").text, 10, "the refusal")
    assert page.verified() == "ok"  # nothing changed

    field.clear()
    field.send_keys(impostor.key_string())
    page.css("#pin-form button[type=submit]").click()
    wait_until(lambda: page.verified() == "failed", 15, "the checkpoint refused")
    assert page.css("[data-key-source]").get_attribute("data-key-source") == "pinned"
    assert "does NOT verify" in page.css("#checkpoint [role=alert]").text
    assert page.css("#log-key-id").text == f"{impostor.key_id:08x}"
    # Receipts are checked under the pinned key too.
    with page.fleet.client() as client:
        receipt = client.results("node-a", limit=1)[0]["inclusion_proof"]
    assert page.check_receipt(json.dumps(receipt)) == "failed"
    assert page.steps()[-1] == ("signature", "false")

    page.css("#unpin-key").click()
    wait_until(lambda: page.verified() == "ok", 15, "the served key in use again")
    page.drain()


def test_new_checkpoints_are_proved_consistent_as_results_arrive(page: LogPage, fleet: Any) -> None:
    """A node joining makes state transitions; the page refreshes on the event stream and
    proves the new checkpoint consistent with the one it saw."""
    page.open()
    wait_until(
        lambda: page.driver.execute_script("return document.body.dataset.events") == "open",
        20,
        "the event stream",
    )
    before = int(page.css("#checkpoint").get_attribute("data-size"))
    fleet.start_node("node-log")
    wait_until(
        lambda: int(page.css("#checkpoint").get_attribute("data-size")) > before,
        60,
        "the page to show a newer checkpoint without being asked",
    )
    wait_until(
        lambda: (
            page.css("#checkpoint-history tbody tr").get_attribute("data-check") == "consistent"
        ),
        15,
        "the new checkpoint proved consistent",
    )
    assert page.css('[data-page="log"]').get_attribute("data-consistency") == "ok"
    assert page.css("#log-alert").text == ""
    page.drain()


def test_a_forked_log_is_shown_loudly(page: LogPage, fleet: Any, log_key: str) -> None:
    """A checkpoint the log's own key signed (a split view served earlier) that the current
    log does not extend: the consistency proof fails, and the page says so."""
    signer = load_signer(fleet.verifier.data_dir / "keys" / "log-signing-key")
    assert signer.verifier.key_string() == log_key
    with fleet.client() as client:
        head = client.request("GET", "/v1/log/checkpoint", format="json")
    forged = Checkpoint(signer.name, head["size"] - 1, secrets.token_bytes(32))
    note = sign_checkpoint(forged, [signer]).decode()
    history = {
        "version": 1,
        "logs": {
            signer.name: [
                {
                    "note": note,
                    "size": str(forged.size),
                    "root": base64.b64encode(forged.root).decode(),
                    "seen_at": "2026-01-01T00:00:00Z",
                    "check": "first",
                    "detail": "planted by the test",
                }
            ]
        },
    }
    page.driver.execute_script(
        "window.localStorage.setItem(arguments[0], arguments[1])", STORAGE_KEY, json.dumps(history)
    )
    page.open()
    alert = wait_until(lambda: page.all("#log-alert [data-consistency=failed]"), 15, "the alert")
    assert "NOT consistent" in alert[0].text
    assert page.css("#log-alert").get_attribute("role") == "alert"
    assert page.css('[data-page="log"]').get_attribute("data-consistency") == "failed"
    assert page.css("#checkpoint-history tbody tr").get_attribute("data-check") == "inconsistent"
    assert page.verified() == "ok"  # the current checkpoint itself is genuine

    page.css("#forget-checkpoints").click()
    wait_until(lambda: page.css("#log-alert").text == "", 15, "the alert gone")
    page.drain()


def test_the_browser_keeps_checkpoints_only(page: LogPage, fleet: Any) -> None:
    stored = page.driver.execute_script(
        "const out = {};"
        "for (const s of [localStorage, sessionStorage])"
        "  for (let i = 0; i < s.length; i++) out[s.key(i)] = s.getItem(s.key(i));"
        "return [out, document.cookie];"
    )
    values, cookies = stored
    assert set(values) == {STORAGE_KEY}
    assert cookies == ""  # the session cookie is HttpOnly
    for secret in (fleet.reader_token(), fleet.operator_token()):
        assert secret not in values[STORAGE_KEY]
    document = json.loads(values[STORAGE_KEY])
    for items in document["logs"].values():
        for item in items:
            assert set(item) <= {"note", "size", "root", "seen_at", "last_seen", "check", "detail"}
