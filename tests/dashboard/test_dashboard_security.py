"""The dashboard's security model in a real headless chromium:

- without a session the browser sees the login form only, and the API answers it 401;
- the token typed into the form is never kept: not in localStorage, sessionStorage, a
  script-visible cookie or the page; the session cookie is HttpOnly, Secure, SameSite=Strict;
- the cookie reads only: every state-changing call made with it is refused, and signing out
  ends it;
- no page makes a request to another origin, and the Content-Security-Policy is in force
  (an injected foreign image is refused);
- data is text: a node label holding HTML renders as characters, never as an element.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from support.browser import (
    console_errors,
    css,
    foreign_requests,
    go,
    headless_chromium,
    requests_seen,
    signed_in,
    wait_ready,
    wait_until,
)

pytestmark = [pytest.mark.tools, pytest.mark.usefixtures("browser_or_skip")]

XSS = "<img src=x onerror=alert(1)>"

# fetch() from inside the page (same origin, the browser's own cookie): [status, body].
FETCH = """
const [method, path, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(path, {method, credentials: 'same-origin', headers: {'Content-Type': 'application/json'},
             body: method === 'GET' || method === 'HEAD' ? undefined : '{"labels": {}}'})
  .then(async (answer) => done([answer.status, await answer.text()]))
  .catch((error) => done([0, String(error)]));
"""


def fetch(browser: Any, method: str, path: str) -> tuple[int, str]:
    status, body = browser.execute_async_script(FETCH, method, path)
    return int(status), str(body)


def node_ids(fleet: Any) -> dict[str, str]:
    with fleet.client() as client:
        return {str(node["name"]): str(node["node_id"]) for node in client.nodes()}


@pytest.mark.parametrize("route", ["#/", "#/nodes", "#/log", "#/nodes/node-a"])
def test_without_a_session_only_the_login_form_shows(fleet: Any, route: str) -> None:
    with headless_chromium() as browser:
        browser.get(f"{fleet.url}/ui/{route}")
        wait_ready(browser)
        pages = [element.get_attribute("data-page") for element in css(browser, "[data-page]")]
        assert pages == ["login"]
        assert not css(browser, "#nav")[0].is_displayed()
        assert not css(browser, "tr[data-node-id], #checkpoint, #reasons")
        field = css(browser, '[data-page="login"] input[type=password]')[0]
        assert field.get_attribute("id") in [
            label.get_attribute("for") for label in css(browser, "label")
        ]
        assert css(browser, 'label[for="token"]')[0].text == "Reader token"
        for path in ("/v1/fleet/summary", "/v1/fleet/nodes", "/v1/nodes", "/v1/events"):
            status, body = fetch(browser, "GET", path)
            assert status == 401, (path, body)
        assert browser.execute_script("return document.body.dataset.events") is None


def test_a_wrong_token_is_refused_in_the_form(fleet: Any) -> None:
    with headless_chromium() as browser:
        browser.get(f"{fleet.url}/ui/")
        wait_ready(browser)
        field = css(browser, "#token")[0]
        field.send_keys("not-the-reader-token-at-all")
        field.submit()
        wait_until(lambda: css(browser, "#login-status")[0].text, 10, "the refusal")
        assert "did not accept" in css(browser, "#login-status")[0].text
        assert css(browser, '[data-page="login"]')


def test_the_token_is_never_stored_and_the_cookie_is_httponly(fleet: Any) -> None:
    token = fleet.reader_token()
    with signed_in(fleet.url, token) as browser:
        stored = browser.execute_script(
            """return {local: JSON.stringify(Object.entries(localStorage)),
                       session: JSON.stringify(Object.entries(sessionStorage)),
                       cookie: document.cookie,
                       page: document.documentElement.outerHTML};"""
        )
        assert stored["local"] == "[]"
        assert stored["session"] == "[]"
        assert stored["cookie"] == ""  # the session cookie is HttpOnly: scripts never see it
        assert token not in stored["page"]
        # Nor after every page was shown (the log page keeps the checkpoints it saw: public).
        for route in ("#/nodes", "#/log", "#/"):
            go(browser, route)
        after = browser.execute_script(
            "return [JSON.stringify(Object.entries(localStorage)),"
            " JSON.stringify(Object.entries(sessionStorage)), document.cookie,"
            " document.documentElement.outerHTML];"
        )
        assert not [place for place in after if token in place]
        assert after[2] == ""
        # The cookie's path is /v1: WebDriver's get_cookies (this page's, /ui) would not list it.
        every = browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
        cookies = {cookie["name"]: cookie for cookie in every}
        assert set(cookies) == {"stockade_session"}
        session = cookies["stockade_session"]
        assert session["httpOnly"] is True
        assert session["secure"] is True
        assert session["sameSite"] == "Strict"
        assert session["path"] == "/v1"
        assert token not in json.dumps(list(cookies.values()))
        # Nothing in the browser's other stores either.
        databases = browser.execute_async_script(
            "const done = arguments[0];"
            "(indexedDB.databases ? indexedDB.databases() : Promise.resolve([]))"
            ".then((list) => done(list.length));"
        )
        assert databases == 0


def test_the_session_cookie_reads_only(fleet: Any) -> None:
    ids = node_ids(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        assert fetch(browser, "GET", "/v1/fleet/nodes")[0] == 200
        for method, path in (
            ("PUT", f"/v1/nodes/{ids['node-a']}/labels"),
            ("POST", f"/v1/nodes/{ids['node-a']}/revoke"),
            ("POST", f"/v1/nodes/{ids['node-a']}/allow"),
            ("POST", "/v1/session"),  # a cookie cannot open another session
        ):
            status, body = fetch(browser, method, path)
            assert status == 401, (method, path, body)
        assert fleet.node("node-a")["state"] == "trusted"

        # Signing out ends the session: the form again, and the API refuses the browser.
        css(browser, "#sign-out")[0].click()
        wait_until(lambda: css(browser, '[data-page="login"]'), 10, "the login form")
        wait_until(lambda: fetch(browser, "GET", "/v1/fleet/nodes")[0] == 401, 5, "the API's 401")
        assert not css(browser, "#nav")[0].is_displayed()


def test_no_request_leaves_the_origin_and_the_csp_holds(fleet: Any) -> None:
    ids = node_ids(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        for route in ("#/", "#/nodes", f"#/nodes/{ids['node-c']}", f"#/nodes/{ids['node-a']}"):
            go(browser, route)
        css(browser, "#history button[data-result-id]")[0].click()
        wait_until(lambda: css(browser, "[data-receipt-check]"), 15, "the receipt check")
        go(browser, "#/log")
        wait_until(lambda: css(browser, "#checkpoint"), 10, "the checkpoint")
        seen = requests_seen(browser)
        assert any(url.startswith(f"{fleet.url}/v1/events") for url in seen)
        assert foreign_requests(seen, fleet.url) == []
        errors = console_errors(browser)
        assert not [line for line in errors if "Content Security Policy" in line], errors

        # The policy is in force: an image from elsewhere, added by a script, is refused.
        browser.execute_script(
            "const image = document.createElement('img');"
            "image.src = 'https://cdn.example.com/pixel.png';"
            "document.body.append(image);"
        )
        wait_until(
            lambda: [line for line in console_errors(browser) if "Content Security Policy" in line],
            5,
            "the CSP's refusal in the console",
        )


def _set_labels_in_database(fleet: Any, node_id: str, labels: dict[str, str]) -> None:
    """Labels written straight into the verifier's database: what the API refuses
    (Kubernetes label syntax) must still render as text if it were ever stored."""
    from sqlalchemy.orm import Session

    from stockade.verifier.db import make_engine
    from stockade.verifier.models import Node

    engine = make_engine(f"sqlite:///{fleet.verifier.data_dir / 'verifier.db'}")
    try:
        with Session(engine) as session, session.begin():
            node = session.get(Node, node_id)
            assert node is not None
            node.labels = labels
    finally:
        engine.dispose()


def test_a_label_holding_html_renders_as_text(fleet: Any) -> None:
    import ssl

    import httpx

    node_id = node_ids(fleet)["node-b"]
    previous = fleet.node(node_id)["labels"]
    # The API refuses the value outright (Kubernetes label syntax)...
    with httpx.Client(
        verify=ssl.create_default_context(cafile=fleet.verifier.ca), timeout=10
    ) as http:
        answer = http.put(
            f"{fleet.url}/v1/nodes/{node_id}/labels",
            json={"labels": {"x": XSS}},
            headers={"Authorization": f"Bearer {fleet.operator_token()}"},
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "labels"
    # ...and were it stored anyway, the page shows it as characters.
    _set_labels_in_database(fleet, node_id, {**previous, "x": XSS})
    try:
        with signed_in(fleet.url, fleet.reader_token()) as browser:
            for route in ("#/nodes?name=node-b", f"#/nodes/{node_id}", f"#/nodes?name={XSS}"):
                go(browser, route)
                assert not css(browser, "main img"), route
                with pytest.raises(Exception):  # noqa: B017 (NoAlertPresentException)
                    browser.switch_to.alert.text  # noqa: B018
            go(browser, "#/nodes?name=node-b")
            tags = [tag.text for tag in css(browser, f'tr[data-node-id="{node_id}"] .tag')]
            assert f"x={XSS}" in tags
            go(browser, f"#/nodes/{node_id}")
            assert f"x={XSS}" in [tag.text for tag in css(browser, "#identity .tag")]
            go(browser, f"#/nodes?name={XSS}")
            assert css(browser, "#filter-name")[0].get_attribute("value") == XSS
            seen = requests_seen(browser)
            assert not [url for url in seen if url.rstrip("/").endswith("/x")], seen
            assert browser.execute_script("return window.__xss === undefined")
    finally:
        _set_labels_in_database(fleet, node_id, previous)
