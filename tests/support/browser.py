"""A real headless browser for the dashboard's tests: Debian's chromium driven through
chromium-driver by Selenium.

    with headless_chromium() as browser:
        browser.get(verifier.url + "/ui")
        login(browser, verifier.url, reader_token)
        wait_ready(browser)
        assert requests_seen(browser) ...

``requests_seen`` reads the DevTools performance log (every ``Network.requestWillBeSent``,
including those the page's scripts, styles and images cause), so a test can show that no
request left the verifier's origin. The verifier's certificate is issued by its own CA, which
the browser does not know: ``acceptInsecureCerts`` lets the page load, and the page is still
served over TLS (a secure context: WebCrypto works).

``browser_unavailable()`` says why a test must skip (no chromium or chromium-driver).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1366, 900)  # a laptop screen


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def headless_chromium(window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A fresh headless chromium (own profile directory, removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="stockade-chromium-"))
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
        "--metrics-recording-only",
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        driver.get("about:blank")
        requests_seen(driver)  # the browser's own start-up pages are not the dashboard's
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def requests_seen(driver: Any) -> list[str]:
    """Every URL the browser requested since the last call (the performance log is drained
    by reading it)."""
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
    """Severe console messages since the last call (CSP violations, script errors)."""
    return [
        str(entry["message"])
        for entry in driver.get_log("browser")
        if entry.get("level") == "SEVERE"
    ]


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except Exception as error:  # a stale element while the page re-renders
            last_error = error
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def wait_ready(driver: Any, timeout: float = 15.0) -> None:
    """Wait for the dashboard's own signal that the current page rendered
    (``document.body.dataset.ready == "1"``)."""
    wait_until(
        lambda: driver.execute_script("return document.body && document.body.dataset.ready") == "1",
        timeout,
        "the dashboard page to render (body[data-ready=1])",
    )


def login(driver: Any, base_url: str, token: str, timeout: float = 15.0) -> None:
    """Open the dashboard and sign in with a reader (or operator) token through its form."""
    from selenium.webdriver.common.by import By

    driver.get(base_url.rstrip("/") + "/ui/")
    field = wait_until(
        lambda: driver.find_element(By.CSS_SELECTOR, '[data-page="login"] input[type=password]'),
        timeout,
        "the login form",
    )
    field.send_keys(token)
    field.submit()
    wait_until(
        lambda: driver.find_elements(By.CSS_SELECTOR, '[data-page]:not([data-page="login"])'),
        timeout,
        "the dashboard after signing in",
    )
