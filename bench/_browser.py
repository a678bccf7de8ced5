"""A headless chromium for the benchmarks: Debian's chromium driven through chromium-driver by
Selenium (the same browser the dashboard's tests use; tests/support/browser.py keeps its own
copy, since the benchmarks never import the tests).

``unavailable()`` says why a benchmark must skip (no chromium, no chromium-driver, no
selenium), or None.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
def headless_chromium(window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A fresh headless chromium (own profile directory, removed afterwards). The verifier's
    certificate is issued by its own CA: ``acceptInsecureCerts`` lets the page load, still
    over TLS."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="stockade-bench-chromium-"))
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
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.accept_insecure_certs = True
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; RuntimeError naming ``what``."""
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
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def login(driver: Any, base_url: str, token: str, timeout: float = 30.0) -> None:
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
