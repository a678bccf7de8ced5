#!/usr/bin/env python3
"""Screenshots of each dashboard page for docs/dashboard.md (docs/img/dashboard-<page>.png).

By default it starts its own development fleet, as the dashboard tests do: a verifier over
TLS with a signed-release policy and three development nodes on swtpm (node-a and node-b
boot the signed release; node-c boots a tampered kernel with Secure Boot off and fails), and
gives a label or two so the pages have something to show. With ``--url`` and
``--token-file`` it photographs a verifier that is already running instead.

    .venv/bin/python scripts/dashboard_screenshots.py            # needs swtpm, chromium
    .venv/bin/python scripts/dashboard_screenshots.py --url https://127.0.0.1:8443 \\
        --token-file /var/lib/stockade/reader-token --out /tmp/shots

The browser is Debian's headless chromium (bench/_browser.py) at 1366 px wide, a
laptop screen; each image holds the whole page (up to ``MAX_HEIGHT`` pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._browser import (  # noqa: E402
    foreign_requests,
    login,
    requests_seen,
    unavailable,
    wait_ready,
    wait_until,
    watched_chromium,
)

WIDTH = 1366
MIN_HEIGHT = 768
MAX_HEIGHT = 3000


@contextmanager
def development_fleet() -> Iterator[tuple[str, str, str]]:
    """(url, reader token, operator token) of a verifier with node-a, node-b (trusted) and
    node-c (failed), all stopped afterwards."""
    from stockade.boot import DevelopmentPlatform, boot_node, load_release
    from stockade.demo.cluster import (
        AgentProcess,
        VerifierProcess,
        ek_ca_bundle,
        make_org_material,
        policy_document,
        wait_for,
    )
    from stockade.tpm.ekca import EkCa
    from stockade.tpm.swtpm import start_swtpm

    with tempfile.TemporaryDirectory(prefix="stockade-dashboard-shots-") as scratch:
        work = Path(scratch)
        home = work / "home"
        home.mkdir()
        ek_ca = EkCa.load_or_create(home / "ek-ca")
        org = make_org_material(work / "org")
        policy = work / "policy.json"
        policy.write_text(json.dumps(policy_document(org, validity_seconds=120)))
        verifier = VerifierProcess(work / "verifier", ek_ca_bundle(ek_ca, work / "ek.pem"), policy)
        agents: list[AgentProcess] = []
        tpms: list[Any] = []
        try:
            verifier.start()
            platform = DevelopmentPlatform.load(org.platform_dir)
            for name, tampered in (("node-a", False), ("node-b", False), ("node-c", True)):
                tpm = start_swtpm(f"shots-{name}", home=home, ek_ca=ek_ca)
                tpms.append(tpm)
                if tampered:
                    release = load_release(org.release_dir, kernel=org.modified_kernel)
                    boot_node(tpm, platform.with_secure_boot(False), release).check()
                else:
                    boot_node(tpm, platform, load_release(org.release_dir)).check()
                agent = AgentProcess(
                    name, tpm.name, verifier, home, work / "agents" / name, interval=5.0
                )
                agent.start()
                agents.append(agent)
            wanted = {"node-a": "trusted", "node-b": "trusted", "node-c": "failed"}

            def settled() -> bool:
                with verifier.client() as client:
                    states = {node["name"]: node["state"] for node in client.nodes()}
                return all(states.get(name) == state for name, state in wanted.items())

            wait_for(settled, 90, f"nodes {wanted}")
            with verifier.client() as client:
                client.set_labels("node-a", {"role": "web", "zone": "a"})
                client.set_labels("node-b", {"role": "db", "zone": "b"})
                client.set_labels("node-c", {"role": "web", "zone": "b"})
            operator = verifier.operator_token() or ""
            yield verifier.url, verifier.reader_token_file.read_text().strip(), operator
        finally:
            for agent in agents:
                agent.stop()
            verifier.stop()
            for tpm in tpms:
                tpm.stop()


def shoot(browser: Any, route: str, path: Path, before: Any = None) -> None:
    browser.set_window_size(WIDTH, MIN_HEIGHT)
    browser.execute_script(
        "document.body.dataset.ready = '0'; window.location.hash = arguments[0];", route
    )
    wait_ready(browser)
    if before is not None:
        before(browser)
    time.sleep(0.5)  # the event stream connects; transitions settle
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, max(MIN_HEIGHT, min(int(height) + 100, MAX_HEIGHT)))
    time.sleep(0.2)
    browser.execute_script(
        "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);"
    )
    browser.save_screenshot(str(path))
    print(f"wrote {path}")


def check_receipt(browser: Any) -> None:
    buttons = browser.find_elements("css selector", "#history button[data-result-id]")
    if buttons:
        buttons[0].click()
        wait_until(
            lambda: browser.find_elements("css selector", "[data-receipt-check]"),
            15,
            "the receipt check",
        )


def screenshots(url: str, token: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with watched_chromium((WIDTH, MIN_HEIGHT)) as browser:
        browser.get(f"{url}/ui/")
        wait_ready(browser)
        browser.save_screenshot(str(out / "dashboard-login.png"))
        print(f"wrote {out / 'dashboard-login.png'}")
        login(browser, url, token)
        wait_ready(browser)
        rows = browser.execute_async_script(
            "const done = arguments[0];"
            "fetch('/v1/fleet/nodes?limit=200', {credentials: 'same-origin'})"
            ".then((answer) => answer.json()).then((page) => done(page.nodes));"
        )
        failed = next((row for row in rows if row["state"] == "failed"), rows[0] if rows else None)
        trusted = next((row for row in rows if row["state"] == "trusted"), None)
        shoot(browser, "#/", out / "dashboard-overview.png")
        shoot(browser, "#/nodes", out / "dashboard-nodes.png")
        if failed is not None:
            shoot(browser, f"#/nodes/{failed['node_id']}", out / "dashboard-node.png")
        if trusted is not None:
            shoot(
                browser,
                f"#/nodes/{trusted['node_id']}",
                out / "dashboard-node-trusted.png",
                check_receipt,
            )
        shoot(browser, "#/log", out / "dashboard-log.png")
        foreign = foreign_requests(requests_seen(browser), url)
        if foreign:
            raise SystemExit(f"requests left the verifier's origin: {foreign}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running verifier (default: start a development fleet)")
    parser.add_argument("--token-file", type=Path, help="its reader token (with --url)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    arguments = parser.parse_args()
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    if arguments.url:
        if arguments.token_file is None:
            raise SystemExit("--url needs --token-file")
        screenshots(arguments.url, arguments.token_file.read_text().strip(), arguments.out)
        return
    with development_fleet() as (url, reader, _operator):
        screenshots(url, reader, arguments.out)


if __name__ == "__main__":
    main()
