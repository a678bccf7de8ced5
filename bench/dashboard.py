"""Dashboard benchmarks: the node list and the overview in a real browser at fleet scale.

A real ``stockade verifier serve`` (TLS on 127.0.0.1, ``stockade.demo.cluster.VerifierProcess``)
on a fresh data directory, started once to make its database, schema and tokens, stopped,
filled with ``NODES`` nodes (``STOCKADE_BENCH_FLEET_NODES``, default 20,000; the fleet of
``bench.fleet_nodes.fill``) and started again. A headless chromium (Debian's chromium and
chromium-driver, by Selenium: ``bench._browser``) signs in with the reader token through the
dashboard's own form; then, the median over rounds of fresh page loads (``about:blank``
first, so each is a navigation, with the session cookie and the browser's cache warm):

- for ``#/nodes``, ``#/nodes?state=untrusted`` and ``#/nodes?label=role%3Ddb``: the time from
  navigation to the first rows on screen (the page's ``performance`` mark
  ``stockade:node-rows``, set once the first page's rows are in the table), and the duration
  of that page's API request (``GET /v1/fleet/nodes?...&limit=50``, its Resource Timing
  entry);
- for ``#/``: the time from navigation to the overview rendered (the shell's
  ``body[data-ready=1]``, recorded in the page by a MutationObserver installed before any of
  its scripts run); and the same for an in-page navigation to it (the hash changed on the
  node list, as a click on "Overview" does);

and the size in bytes of the unfiltered first API page (50 nodes) as the API answers it.

Without chromium, chromium-driver or selenium the rows are reported as skipped, with why.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import _browser
from bench.fleet_nodes import NODES, fill
from bench.timing import Row

ROUTES = ("#/nodes", "#/nodes?state=untrusted", "#/nodes?label=role%3Ddb")
PAGE_ROWS = 50  # the node list's default page
WARMUP = 1  # unmeasured page loads per route (module and style caches, database pages)
LOAD_TIMEOUT = 60.0

# Run in every new document before its own scripts: the first time the shell marks a page
# other than the login view rendered, when (ms since navigation) and which page.
READY_OBSERVER = """
(() => {
  const seen = () => {
    if (window.__benchReady || !document.body || document.body.dataset.ready !== "1") return;
    const page = document.querySelector("main [data-page]");
    if (!page || page.dataset.page === "login") return;
    window.__benchReady = { at: performance.now(), page: page.dataset.page };
  };
  new MutationObserver(seen).observe(document, {
    subtree: true, attributes: true, attributeFilter: ["data-ready"],
  });
})();
"""

NODE_ROWS = """
const mark = performance.getEntriesByName("stockade:node-rows");
const rows = document.querySelectorAll("#node-table tr[data-node-id]").length;
const api = performance.getEntriesByType("resource").filter((entry) => {
  const url = new URL(entry.name);
  return url.pathname === "/v1/fleet/nodes" && url.searchParams.get("limit") === "50";
});
return mark.length ? [mark[0].startTime, api.length ? api[0].duration : null, rows] : null;
"""


def _rows(what: list[tuple[str, str]], value: float = math.nan, note: str = "") -> list[Row]:
    return [(f"{name}{note}", value, unit) for name, unit in what]


def _names() -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    for route in ROUTES:
        names.append((f"dashboard {route} navigation to first rows ({NODES} nodes)", "ms"))
        names.append((f"dashboard {route} its API request ({NODES} nodes)", "ms"))
    names.append((f"dashboard #/ navigation to overview rendered ({NODES} nodes)", "ms"))
    names.append((f"dashboard #/ in-page navigation to overview rendered ({NODES} nodes)", "ms"))
    names.append((f"dashboard first API page of {PAGE_ROWS} ({NODES} nodes)", "bytes"))
    return names


def _load(browser: Any, url: str) -> None:
    """A fresh navigation to ``url`` (from about:blank)."""
    browser.get("about:blank")
    browser.get(url)


def _node_rows(browser: Any, url: str) -> tuple[float, float]:
    """(ms from navigation to the first rows, ms of the page's API request)."""
    _load(browser, url)
    found = _browser.wait_until(
        lambda: browser.execute_script(NODE_ROWS), LOAD_TIMEOUT, f"the node rows of {url}"
    )
    first_rows, api, rows = found
    if rows != PAGE_ROWS or api is None:
        raise RuntimeError(f"{url}: {rows} rows on screen, API entry {api!r}")
    return float(first_rows), float(api)


def _overview_rendered(browser: Any, route: str) -> float:
    """When (ms since navigation) the page READY_OBSERVER saw rendered, which must be the
    overview (``route``: what was loaded, for the error)."""
    ready = _browser.wait_until(
        lambda: browser.execute_script("return window.__benchReady || null"),
        LOAD_TIMEOUT,
        "the overview rendered",
    )
    if ready["page"] != "overview":
        raise RuntimeError(f"{route} rendered page {ready['page']!r}, not the overview")
    return float(ready["at"])


def _overview(browser: Any, url: str) -> float:
    """ms from navigation to the overview rendered."""
    _load(browser, url)
    return _overview_rendered(browser, url)


def _overview_in_page(browser: Any, base: str) -> float:
    """ms from the hash set to ``#/`` on the (freshly loaded) node list to the overview
    rendered."""
    _node_rows(browser, base + "#/nodes")
    started = browser.execute_script(
        "window.__benchReady = null; const at = performance.now();"
        "window.location.hash = '#/'; return at;"
    )
    return _overview_rendered(browser, "#/") - float(started)


def _fill(data_dir: Path) -> None:
    from stockade.verifier.db import make_engine

    engine = make_engine(f"sqlite:///{data_dir / 'verifier.db'}")
    try:
        fill(engine, NODES, datetime.now(UTC))
    finally:
        engine.dispose()


def run(rounds: int) -> list[Row]:
    reason = _browser.unavailable()
    if reason is not None:
        print(f"bench.dashboard: skipped ({reason})", file=sys.stderr)
        return _rows(_names(), note=f": skipped ({reason})")

    import httpx

    from stockade.demo.cluster import VerifierProcess, free_port

    with tempfile.TemporaryDirectory(prefix="stockade-bench-dashboard-") as scratch:
        data = Path(scratch) / "verifier"
        port = free_port()
        # No EK CA, policy or enrollment mode: nothing enrolls, the dashboard only reads.
        verifier = VerifierProcess(
            data,
            ek_ca=Path("/dev/null"),
            policy=Path("/dev/null"),
            port=port,
            serve_args=("--data-dir", str(data), "--port", str(port)),
        )
        try:
            verifier.start(timeout=60)  # makes the database, its schema and the tokens
            verifier.stop()
            _fill(data)
            verifier.start(timeout=60)
            token = verifier.reader_token_file.read_text().strip()
            with httpx.Client(
                base_url=verifier.url,
                verify=str(verifier.ca),
                headers={"Authorization": f"Bearer {token}"},
                timeout=30.0,
            ) as client:
                answer = client.get("/v1/fleet/nodes", params={"limit": str(PAGE_ROWS)})
                answer.raise_for_status()
                if answer.json()["total"] != NODES:
                    raise RuntimeError(f"the verifier counts {answer.json()['total']} nodes")
                page_bytes = float(len(answer.content))

            first_rows: dict[str, list[float]] = {route: [] for route in ROUTES}
            api: dict[str, list[float]] = {route: [] for route in ROUTES}
            overview: list[float] = []
            in_page: list[float] = []
            with _browser.headless_chromium() as browser:
                browser.execute_cdp_cmd(
                    "Page.addScriptToEvaluateOnNewDocument", {"source": READY_OBSERVER}
                )
                _browser.login(browser, verifier.url, token)
                base = f"{verifier.url}/ui/"
                for route in ROUTES:
                    for number in range(WARMUP + rounds):
                        rows_ms, api_ms = _node_rows(browser, base + route)
                        if number >= WARMUP:
                            first_rows[route].append(rows_ms)
                            api[route].append(api_ms)
                for number in range(WARMUP + rounds):
                    rendered = _overview(browser, base + "#/")
                    if number >= WARMUP:
                        overview.append(rendered)
                for number in range(WARMUP + rounds):
                    rendered = _overview_in_page(browser, base)
                    if number >= WARMUP:
                        in_page.append(rendered)
        except Exception as error:
            print(f"bench.dashboard: FAILED: {error}\n{verifier.tail()}", file=sys.stderr)
            return _rows(_names(), note=": FAILED (see stderr)")
        finally:
            verifier.stop()

    values = []
    for route in ROUTES:
        values += [statistics.median(first_rows[route]), statistics.median(api[route])]
    values += [statistics.median(overview), statistics.median(in_page), page_bytes]
    return [(name, value, unit) for (name, unit), value in zip(_names(), values, strict=True)]


if __name__ == "__main__":
    for name, value, unit in run(15):
        print(f"{name:<70} {value:>10.1f} {unit}")
