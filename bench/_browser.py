"""A headless chromium for the benchmarks: Debian's chromium driven through chromium-driver by
Selenium (the same browser the dashboard's tests use: tests/support/browser.py and
scripts/dashboard_screenshots.py build on this module; the benchmarks never import the tests).

``unavailable()`` says why a benchmark must skip (no chromium, no chromium-driver, no
selenium), or None.

``watched_chromium()`` is the browser with its DevTools performance and console logs kept:
``requests_seen`` reads every ``Network.requestWillBeSent`` (including those the page's
scripts, styles and images cause), so a caller can show that no request left the verifier's
origin (``foreign_requests``); ``console_errors`` reads the severe console messages.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1366, 900)  # a laptop screen


def unavailable() -> str | None:
    """Why the browser benchmarks cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"no {path}: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no selenium: pip install -e '.[dev]'"
    return None


@contextmanager
def headless_chromium(
    window: tuple[int, int] = WINDOW,
    *,
    arguments: Iterable[str] = (),
    capabilities: Mapping[str, Any] | None = None,
    page_load_timeout: float = 60.0,
    profile_prefix: str = "stockade-bench-chromium-",
) -> Iterator[Any]:
    """A fresh headless chromium (own profile directory, removed afterwards). The verifier's
    certificate is issued by its own CA: ``acceptInsecureCerts`` lets the page load, still
    over TLS (a secure context: WebCrypto works). ``arguments`` and ``capabilities`` are
    added to the usual ones."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix=profile_prefix))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # no update checks or field trials: only the page
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        *arguments,
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.accept_insecure_certs = True
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def watched_chromium(window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A fresh ``headless_chromium`` keeping its DevTools performance log (``requests_seen``)
    and its console (``console_errors``), its own start-up requests already drained."""
    with headless_chromium(
        window,
        arguments=("--metrics-recording-only",),
        capabilities={"goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}},
        page_load_timeout=30.0,
        profile_prefix="stockade-chromium-",
    ) as driver:
        driver.get("about:blank")
        requests_seen(driver)  # the browser's own start-up pages are not the dashboard's
        yield driver


def requests_seen(driver: Any) -> list[str]:
    """Every URL the browser requested since the last call (the performance log is drained
    by reading it; ``watched_chromium`` keeps it)."""
    urls: list[str] = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(str(message["params"]["request"]["url"]))
    return urls


def foreign_requests(urls: list[str], origin: str) -> list[str]:
    """The URLs not on ``origin`` (scheme://host:port); ``data:``, ``blob:`` and the
    browser's own ``about:``/``chrome:`` URLs never leave the browser and are not counted."""
    wanted = urlsplit(origin)
    foreign = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about", "chrome"):
            continue
        if (parts.scheme, parts.hostname, parts.port) != (
            wanted.scheme,
            wanted.hostname,
            wanted.port,
        ):
            foreign.append(url)
    return foreign


def console_errors(driver: Any) -> list[str]:
    """Severe console messages since the last call (CSP violations, script errors;
    ``watched_chromium`` keeps them)."""
    return [
        str(entry["message"])
        for entry in driver.get_log("browser")
        if entry.get("level") == "SEVERE"
    ]


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    error: type[Exception] = RuntimeError,
) -> Any:
    """Poll ``condition`` until it returns something truthy; ``error`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except Exception as caught:  # a stale element while the page re-renders
            last_error = caught
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise error(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


# How the helpers below wait: ``wait_until`` or one like it (condition, timeout, what).
Wait = Callable[[Callable[[], Any], float, str], Any]


def wait_ready(driver: Any, timeout: float = 15.0, *, wait: Wait = wait_until) -> None:
    """Wait for the dashboard's own signal that the current page rendered
    (``document.body.dataset.ready == "1"``)."""
    wait(
        lambda: driver.execute_script("return document.body && document.body.dataset.ready") == "1",
        timeout,
        "the dashboard page to render (body[data-ready=1])",
    )


def login(
    driver: Any, base_url: str, token: str, timeout: float = 30.0, *, wait: Wait = wait_until
) -> None:
    """Open the dashboard and sign in with a reader (or operator) token through its form."""
    from selenium.webdriver.common.by import By

    driver.get(base_url.rstrip("/") + "/ui/")
    field = wait(
        lambda: driver.find_element(By.CSS_SELECTOR, '[data-page="login"] input[type=password]'),
        timeout,
        "the login form",
    )
    field.send_keys(token)
    field.submit()
    wait(
        lambda: driver.find_elements(By.CSS_SELECTOR, '[data-page]:not([data-page="login"])'),
        timeout,
        "the dashboard after signing in",
    )
