"""The dashboard's pages in a real headless chromium against a real verifier and real
development nodes (tests/dashboard/conftest.py: node-a and node-b trusted, node-c failed).

Each page renders with the fleet's nodes; the node list filters and pages on the server; the
failed node's detail shows every reason and its boot log beside the reference with the
differing events marked; a receipt is checked in the browser; the keyboard reaches the
navigation and the filters and opens a row with Enter; no page scrolls sideways on a laptop
screen. And at 20,000 nodes the node list still pages and filters (how fast:
bench/dashboard.py).
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from support.browser import (
    css,
    foreign_requests,
    go,
    headless_chromium,
    real_errors,
    requests_seen,
    wait_ready,
    wait_until,
)
from support.browser import signed_in as signed_in_at

pytestmark = [pytest.mark.tools, pytest.mark.usefixtures("browser_or_skip")]

LAPTOP = (1366, 768)
signed_in = partial(signed_in_at, window=LAPTOP)  # every page is checked on a laptop screen


def page_of(browser: Any) -> str:
    return str(
        browser.execute_script("return document.querySelector('main [data-page]').dataset.page")
    )


def ids_of(fleet: Any) -> dict[str, str]:
    with fleet.client() as client:
        return {str(node["name"]): str(node["node_id"]) for node in client.nodes()}


def no_sideways_scroll(browser: Any) -> None:
    width = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"


def test_each_page_renders_with_real_nodes(fleet: Any) -> None:
    ids = ids_of(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        # The overview: counts by state, the failing node, the timeline, the log head.
        go(browser, "#/")
        assert page_of(browser) == "overview"
        counts = {
            element.get_attribute("data-count"): int(element.text)
            for element in css(browser, "[data-count]")
        }
        assert counts["trusted"] >= 2 and counts["failed"] >= 1, counts
        assert css(browser, f'#failing tr[data-node-id="{ids["node-c"]}"]')
        assert css(browser, f'#stale tr[data-node-id="{ids["node-a"]}"]')
        assert css(browser, f'#timeline li[data-node-id="{ids["node-c"]}"]')
        assert "stockade-os@1.0.0" in css(browser, "#releases")[0].text
        assert not css(browser, ".error")
        no_sideways_scroll(browser)

        # The node list: every node, its state badge, the total.
        go(browser, "#/nodes")
        assert page_of(browser) == "nodes"
        rows = {row.get_attribute("data-node-id"): row for row in css(browser, "tr[data-node-id]")}
        for name in ("node-a", "node-b", "node-c"):
            assert ids[name] in rows, name
        badge = rows[ids["node-c"]].find_element("css selector", "[data-state]")
        assert badge.get_attribute("data-state") == "failed"
        assert "nodes match" in css(browser, "#node-count")[0].text
        no_sideways_scroll(browser)

        # The failed node: every reason, the boot log beside the reference.
        go(browser, f"#/nodes/{ids['node-c']}")
        assert page_of(browser) == "node"
        reasons = [item.text for item in css(browser, "#reasons li")]
        assert any("PCR 4" in reason for reason in reasons), reasons
        assert any("PCR 7" in reason for reason in reasons), reasons
        differing = css(browser, '#boot tr[data-status="differs"]')
        assert differing, css(browser, "#boot")[0].text
        assert {row.get_attribute("data-pcr") for row in differing} >= {"4", "7"}
        assert css(browser, '#boot tr[data-status="same"]')
        assert css(browser, "#history tr[data-result-id]")
        assert not css(browser, ".error"), [e.text for e in css(browser, ".error")]
        no_sideways_scroll(browser)

        # A trusted node: nothing differs.
        go(browser, f"#/nodes/{ids['node-a']}")
        assert css(browser, '#current [data-state="affirming"]')
        assert css(browser, '#boot tr[data-status="same"]')
        assert not css(browser, '#boot tr[data-status="differs"]')
        assert css(browser, "#membership h3")
        assert not css(browser, ".error"), [e.text for e in css(browser, ".error")]

        # The transparency log page (helper log-ui's) is routed by the shell.
        go(browser, "#/log")
        assert page_of(browser) == "log"
        wait_until(lambda: css(browser, "#checkpoint"), 10, "the log's checkpoint")
        no_sideways_scroll(browser)

        assert foreign_requests(requests_seen(browser), fleet.url) == []
        assert real_errors(browser) == []


def test_the_node_list_filters_and_pages_on_the_server(fleet: Any) -> None:
    ids = ids_of(fleet)
    with fleet.client() as client:
        client.set_labels(ids["node-b"], {"tier": "web"})
    with signed_in(fleet.url, fleet.reader_token()) as browser:

        def shown() -> set[str]:
            return {row.get_attribute("data-node-id") for row in css(browser, "tr[data-node-id]")}

        go(browser, "#/nodes?state=failed")
        assert ids["node-c"] in shown()
        assert not {ids["node-a"], ids["node-b"]} & shown()
        states = {
            badge.get_attribute("data-state")
            for badge in css(browser, "tbody td:nth-child(2) [data-state]")
        }
        assert states == {"failed"}

        go(browser, "#/nodes?name=NODE-A")  # any case
        assert shown() == {ids["node-a"]}
        assert css(browser, "#filter-name")[0].get_attribute("value") == "NODE-A"

        go(browser, "#/nodes?label=tier%3Dweb")
        assert shown() == {ids["node-b"]}

        go(browser, "#/nodes?release=stockade-os%401.0.0&state=trusted")
        assert {ids["node-a"], ids["node-b"]} <= shown()
        assert ids["node-c"] not in shown()

        go(browser, "#/nodes?label=not%20a%20label")  # the API's 400 is shown, not a crash
        assert css(browser, "#node-count .error")

        # One node per page: Next follows the API's cursor, Previous goes back.
        go(browser, "#/nodes?name=node-&limit=1")
        first = shown()
        assert len(first) == 1
        total = int(css(browser, "#node-count")[0].text.split()[0])
        assert total >= 3
        browser.execute_script("document.body.dataset.ready = '0'")
        css(browser, "#next-page")[0].click()
        wait_ready(browser)
        second = shown()
        assert len(second) == 1 and second != first
        browser.execute_script("document.body.dataset.ready = '0'")
        css(browser, "#prev-page")[0].click()
        wait_ready(browser)
        assert shown() == first
        assert real_errors(browser) == [] or all("400" in line for line in real_errors(browser))


def test_a_receipt_is_checked_in_the_browser(fleet: Any) -> None:
    ids = ids_of(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        go(browser, f"#/nodes/{ids['node-a']}")
        button = css(browser, "#history button[data-result-id]")[0]
        button.click()
        outcome = wait_until(
            lambda: css(browser, "#history [data-receipt-check]"), 15, "the receipt check"
        )[0]
        assert outcome.get_attribute("data-receipt-check") == "ok", outcome.text
        assert "inclusion" in outcome.text
        assert foreign_requests(requests_seen(browser), fleet.url) == []


def test_the_keyboard_reaches_the_nav_and_filters_and_opens_a_row(fleet: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ids = ids_of(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        browser.get("about:blank")  # a fresh document: focus starts at its top
        browser.get(f"{fleet.url}/ui/#/nodes?name=node-")
        wait_ready(browser)
        reached: list[str] = []
        row_link = None
        for _ in range(40):
            ActionChains(browser).send_keys(Keys.TAB).perform()
            described = browser.execute_script(
                """const e = document.activeElement;
                const row = e.closest('tr[data-node-id]');
                return [e.tagName.toLowerCase(), e.id || e.textContent.trim().slice(0, 30),
                        row ? row.dataset.nodeId : null];"""
            )
            reached.append(f"{described[0]}:{described[1]}")
            if described[2]:
                row_link = described[2]
                break
        for wanted in (
            "a:Skip to content",
            "a:Overview",
            "a:Nodes",
            "a:Transparency log",
            "select:filter-state",
            "input:filter-release",
            "input:filter-label",
            "input:filter-name",
            "button:Apply",
        ):
            assert wanted in reached, (wanted, reached)
        assert row_link in ids.values(), reached
        # Every focused element shows a visible focus indicator.
        outline = browser.execute_script(
            "return getComputedStyle(document.activeElement).outlineStyle"
        )
        assert outline not in ("none", ""), outline
        browser.execute_script("document.body.dataset.ready = '0'")
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_ready(browser)
        assert browser.execute_script("return window.location.hash") == f"#/nodes/{row_link}"
        assert page_of(browser) == "node"

        # A filter typed and submitted with Enter lands in the URL.
        go(browser, "#/nodes")
        field = css(browser, "#filter-name")[0]
        field.send_keys("node-b")
        browser.execute_script("document.body.dataset.ready = '0'")
        field.send_keys(Keys.ENTER)
        wait_ready(browser)
        assert browser.execute_script("return window.location.hash") == "#/nodes?name=node-b"
        rows = css(browser, "tr[data-node-id]")
        assert [row.get_attribute("data-node-id") for row in rows] == [ids["node-b"]]


def test_the_pages_have_labels_and_headings(fleet: Any) -> None:
    """Every form control has a label, every table header a scope, every page one h1, the
    live region exists (what a screen reader needs)."""
    ids = ids_of(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        for route in ("#/", "#/nodes", f"#/nodes/{ids['node-c']}"):
            go(browser, route)
            problems = browser.execute_script(
                """const found = [];
                for (const e of document.querySelectorAll('input, select')) {
                  if (!e.labels || !e.labels.length) found.push('unlabelled ' + e.id);
                }
                for (const th of document.querySelectorAll('main th')) {
                  if (!th.getAttribute('scope')) found.push('th without scope: ' + th.textContent);
                }
                if (document.querySelectorAll('main h1').length !== 1) found.push('h1 count');
                if (!document.querySelector('[aria-live]')) found.push('no live region');
                if (!document.querySelector('nav[aria-label]')) found.push('no labelled nav');
                return found;"""
            )
            assert problems == [], (route, problems)


# Every visible text's contrast with the background it is drawn on (WCAG 2 formula): 4.5:1,
# or 3:1 for large text (24 px, or 18.66 px bold). Backgrounds with alpha are blended over
# what is under them.
CONTRAST = """
const parse = (text) => {
  const m = text.match(/rgba?\\(([^)]+)\\)/);
  if (!m) return [255, 255, 255, 1];
  const parts = m[1].split(',').map((part) => parseFloat(part));
  return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
};
const blend = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3]));
const background = (element) => {
  const layers = [];
  for (let e = element; e; e = e.parentElement) {
    const color = parse(getComputedStyle(e).backgroundColor);
    if (color[3] > 0) layers.push(color);
    if (color[3] >= 1) break;
  }
  let result = [255, 255, 255];
  for (const layer of layers.reverse()) result = blend(layer, result);
  return result;
};
const luminance = (rgb) => {
  const [r, g, b] = rgb.map((v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const found = [];
for (const element of document.querySelectorAll('body *')) {
  const own = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !element.getClientRects().length) continue;
  const style = getComputedStyle(element);
  if (style.visibility === 'hidden') continue;
  if (element.closest('[hidden], .visually-hidden, :disabled')) continue;
  const fg = parse(style.color);
  const bg = background(element);
  const color = blend(fg, bg);
  const [a, b] = [luminance(color), luminance(bg)];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(style.fontSize);
  const large = size >= 24 || (size >= 18.66 && parseInt(style.fontWeight, 10) >= 700);
  if (ratio < (large ? 3 : 4.5)) {
    const text = element.textContent.trim().slice(0, 30);
    found.push(`${element.tagName} "${text}" ${ratio.toFixed(2)}`);
  }
}
return found;
"""


def test_every_text_meets_wcag_aa_contrast(fleet: Any) -> None:
    ids = ids_of(fleet)
    with signed_in(fleet.url, fleet.reader_token()) as browser:
        pages = ("#/", "#/nodes", f"#/nodes/{ids['node-c']}", f"#/nodes/{ids['node-a']}")
        for route in pages:
            go(browser, route)
            time.sleep(2.1)  # the timeline's highlight of a new event has faded
            assert browser.execute_script(CONTRAST) == [], route
    with headless_chromium(LAPTOP) as browser:  # the login view
        browser.get(f"{fleet.url}/ui/")
        wait_ready(browser)
        assert browser.execute_script(CONTRAST) == []


def _fill_fleet(data_dir: Path, count: int) -> None:
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.fleet_nodes import fill

    from stockade.verifier.db import make_engine

    engine = make_engine(f"sqlite:///{data_dir / 'verifier.db'}")
    try:
        from datetime import UTC, datetime

        fill(engine, count, datetime.now(UTC))
    finally:
        engine.dispose()


NODES_20K = 20_000
PAGE_ROWS = 50  # the node list's default page
DASH = "\u2013"  # the count's range: "showing 1 to 50."


def test_the_node_list_pages_and_filters_at_20000_nodes(tmp_path: Path) -> None:
    """With 20,000 nodes in the verifier's database (bench/fleet_nodes.py's fleet, named
    node-00000 to node-19999): the first page shows the first 50 by name and counts all
    20,000, Next page shows the next 50, and a filter narrows the count. Its speed is
    measured by the benchmark (bench/dashboard.py, ``make bench``), not here."""
    from support.verifier_serve import ServedVerifier

    data = tmp_path / "verifier"
    verifier = ServedVerifier(data, enrollment_mode=None)
    verifier.start()  # makes the database, its schema and the tokens
    verifier.stop()
    _fill_fleet(data, NODES_20K)
    verifier.start()
    try:
        token = (data / "reader-token").read_text().strip()
        with signed_in(verifier.url, token) as browser:

            def shown() -> list[str]:
                return [
                    row.find_element("css selector", ".node-name").text
                    for row in css(browser, "#node-table tr[data-node-id]")
                ]

            def count() -> str:
                return str(css(browser, "#node-count")[0].text)

            def click_and_wait(selector: str) -> None:
                browser.execute_script("document.body.dataset.ready = '0'")
                css(browser, selector)[0].click()
                wait_ready(browser, timeout=30)

            go(browser, "#/nodes")
            first = shown()
            assert first == [f"node-{number:05d}" for number in range(PAGE_ROWS)]
            assert count() == f"{NODES_20K} nodes match; showing 1{DASH}{PAGE_ROWS}.", count()

            click_and_wait("#next-page")
            second = shown()
            assert second == [f"node-{number:05d}" for number in range(PAGE_ROWS, 2 * PAGE_ROWS)]
            assert not set(first) & set(second)
            assert count() == f"{NODES_20K} nodes match; showing 51{DASH}100.", count()
            click_and_wait("#prev-page")
            assert shown() == first

            # A filter through the form: one node in four has role=db (bench/fleet_nodes.py).
            css(browser, "#filter-label")[0].send_keys("role=db")
            click_and_wait(".filters button[type=submit]")
            assert "label=role%3Ddb" in browser.current_url
            role_db = NODES_20K // 4
            assert count() == f"{role_db} nodes match; showing 1{DASH}{PAGE_ROWS}.", count()
            assert shown() == [f"node-{number:05d}" for number in range(1, 4 * PAGE_ROWS, 4)]
            assert all(
                "role=db" in row.text for row in css(browser, "#node-table tr[data-node-id]")
            )
            assert real_errors(browser) == []
    finally:
        verifier.stop()
