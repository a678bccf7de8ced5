"""A real headless browser for the dashboard's tests: Debian's chromium driven through
chromium-driver by Selenium (``bench._browser``, which the benchmarks and
scripts/dashboard_screenshots.py use too).

    with signed_in(verifier.url, reader_token) as browser:
        go(browser, "#/nodes")
        assert css(browser, "tr[data-node-id]") ...
        assert not foreign_requests(requests_seen(browser), verifier.url)

``headless_chromium`` keeps the DevTools performance log: ``requests_seen`` reads it (every
``Network.requestWillBeSent``, including those the page's scripts, styles and images cause),
so a test can show that no request left the verifier's origin. The verifier's certificate is
issued by its own CA, which the browser does not know: ``acceptInsecureCerts`` lets the page
load, and the page is still served over TLS (a secure context: WebCrypto works). Here a wait
that times out is a test failure (AssertionError).

``browser_unavailable()`` says why a test must skip (no chromium or chromium-driver).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench import _browser
from bench._browser import WINDOW, console_errors, foreign_requests, requests_seen

__all__ = [
    "WINDOW",
    "browser_unavailable",
    "console_errors",
    "css",
    "foreign_requests",
    "go",
    "headless_chromium",
    "login",
    "real_errors",
    "requests_seen",
    "signed_in",
    "wait_ready",
    "wait_until",
]


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    return _browser.unavailable()


def headless_chromium(window: tuple[int, int] = WINDOW) -> Any:
    """A fresh headless chromium (own profile directory, removed afterwards), its requests
    and console kept from the first page on (a context manager)."""
    return _browser.watched_chromium(window)


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what``."""
    return _browser.wait_until(condition, timeout, what, interval, error=AssertionError)


def wait_ready(driver: Any, timeout: float = 15.0) -> None:
    """Wait for the dashboard's own signal that the current page rendered
    (``document.body.dataset.ready == "1"``)."""
    _browser.wait_ready(driver, timeout, wait=wait_until)


def login(driver: Any, base_url: str, token: str, timeout: float = 15.0) -> None:
    """Open the dashboard and sign in with a reader (or operator) token through its form."""
    _browser.login(driver, base_url, token, timeout, wait=wait_until)


@contextmanager
def signed_in(url: str, token: str, window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A fresh chromium signed in to the dashboard through its login form."""
    with headless_chromium(window) as browser:
        login(browser, url, token)
        wait_ready(browser)
        yield browser


def go(browser: Any, route: str) -> None:
    """Navigate inside the page (a hash route) and wait for it to render."""
    browser.execute_script(
        "document.body.dataset.ready = '0'; window.location.hash = arguments[0];", route
    )
    wait_ready(browser)


def real_errors(driver: Any) -> list[str]:
    """Console errors other than the expected 401 of the first probe (before signing in)."""
    return [line for line in console_errors(driver) if "status of 401" not in line]


def css(browser: Any, selector: str) -> list[Any]:
    """The elements matching a CSS selector (none: an empty list)."""
    return list(browser.find_elements("css selector", selector))
