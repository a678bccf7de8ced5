"""The dashboard's routes without a browser (``stockade.verifier.dashboard``): the shell and
its assets come from the package only, with fixed content types and the security headers
(the CSP first) on every answer, 404 for anything else (no traversal), and no credential
needed for them while every API route still answers 401 without one. Plus static checks of
the shipped scripts: no HTML parsing of data, no external URL, no inline script or style.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from stockade.tpm.ekca import EkCa
from stockade.verifier import VerifierConfig, create_app, dashboard
from stockade.verifier.config import EnrollmentMode

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "src" / "stockade" / "verifier" / "ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


def shipped() -> list[Path]:
    return sorted(path for path in UI.rglob("*") if path.is_file())


@pytest.fixture
def routes() -> Iterator[TestClient]:
    """The dashboard router alone (its answers need nothing else)."""
    app = FastAPI()
    app.include_router(dashboard.router)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def verifier(tmp_path: Path, ek_ca: EkCa) -> Iterator[TestClient]:
    """The whole verifier app, as ``stockade verifier serve`` builds it."""
    config = VerifierConfig(
        data_dir=tmp_path / "verifier",
        ek_roots=ek_ca.trusted_roots(),
        ek_intermediates=ek_ca.intermediates(),
        enrollment_mode=EnrollmentMode.OPEN,
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


def assert_security_headers(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
def test_the_shell_is_served_with_the_security_headers(routes: TestClient, path: str) -> None:
    response = routes.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response)
    assert response.content == (UI / "index.html").read_bytes()


def test_every_shipped_file_is_served_with_its_fixed_type(routes: TestClient) -> None:
    files = shipped()
    assert {"index.html", "app.css", "app.js"} <= {path.name for path in files}
    for path in files:
        name = path.relative_to(UI).as_posix()
        response = routes.get(f"/ui/assets/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == TYPES[path.suffix], name
        assert response.content == path.read_bytes(), name
        assert_security_headers(response)


def test_assets_revalidate_with_an_etag(routes: TestClient) -> None:
    first = routes.get("/ui/assets/app.js")
    assert first.headers["cache-control"] == "no-cache"
    again = routes.get("/ui/assets/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert_security_headers(again)
    head = routes.head("/ui/assets/app.js")
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "../dashboard.py",
        "..%2fdashboard.py",
        "%2e%2e/dashboard.py",
        "pages/../../dashboard.py",
        "pages/..%2f..%2fapp.py",
        "..%5c..%5capp.py",
        "%2fetc%2fpasswd",
        "/etc/passwd",
        "app.js%00.css",
        "app.js/",
        "App.js",
        ".hidden.js",
        "pages",
        "lib/",
        "missing.js",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "app.py",
        "index.htm",
        "a" * 300 + ".js",
    ],
)
def test_anything_but_a_shipped_file_is_404_with_the_headers(routes: TestClient, path: str) -> None:
    response = routes.get(f"/ui/assets/{path}")
    assert response.status_code == 404, path
    assert response.content == b"not found\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert_security_headers(response)


def test_a_link_out_of_the_ui_directory_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, routes: TestClient
) -> None:
    ui = tmp_path / "ui"
    ui.mkdir()
    (ui / "app.js").write_text("export {};\n")
    secret = tmp_path / "secret.js"
    secret.write_text("the operator token\n")
    (ui / "leak.js").symlink_to(secret)
    monkeypatch.setattr(dashboard, "UI_DIR", ui.resolve())
    assert routes.get("/ui/assets/app.js").status_code == 200
    assert routes.get("/ui/assets/leak.js").status_code == 404


def test_the_shell_needs_no_credential_but_the_api_does(verifier: TestClient) -> None:
    page = verifier.get("/ui/")
    assert page.status_code == 200
    assert_security_headers(page)
    assert verifier.get("/ui/assets/app.js").status_code == 200
    for route in ("/v1/fleet/summary", "/v1/fleet/nodes", "/v1/nodes", "/v1/events"):
        answer = verifier.get(route)
        assert answer.status_code == 401, route
        assert answer.json()["error"] == "read-token"
    # The routes are not in the API description (they are not part of the API).
    token = (verifier.app.state.service.config.data_dir / "reader-token").read_text().strip()  # type: ignore[attr-defined]
    document = verifier.get("/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert not [path for path in document.json()["paths"] if path.startswith("/ui")]


def test_package_data_ships_every_ui_file() -> None:
    """pyproject's package-data patterns cover each file under ui/ (a wheel built without
    one would serve a page whose script is missing)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["stockade"]
    package = ROOT / "src" / "stockade"
    for path in shipped():
        name = path.relative_to(package).as_posix()
        assert any(
            fnmatch.fnmatch(name, pattern) and name.count("/") == pattern.count("/")
            for pattern in patterns
        ), f"{name} is not package data"
        assert dashboard.asset_file(path.relative_to(UI).as_posix()) is not None, name


# -- the scripts themselves ------------------------------------------------------------

HTML_SINKS = re.compile(
    r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|\beval\s*\(|new\s+Function\b"
    r"|createContextualFragment|DOMParser"
)
EXTERNAL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")


def test_no_script_parses_data_as_html() -> None:
    for path in shipped():
        if path.suffix == ".js":
            text = path.read_text()
            assert not HTML_SINKS.search(text), f"{path.name}: {HTML_SINKS.search(text)}"


def test_nothing_refers_to_another_origin() -> None:
    """No CDN, font, analytics or any other host in what the page loads."""
    for path in shipped():
        for line in path.read_text().splitlines():
            code = line.split("// ", 1)[0] if path.suffix == ".js" else line
            assert not EXTERNAL.search(code), f"{path.name}: {line.strip()}"


def test_the_shell_has_no_inline_script_or_style() -> None:
    """The CSP allows scripts and styles from this origin only: inline ones would be
    refused, so there are none."""
    html = (UI / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)
    for path in shipped():
        if path.suffix == ".js":
            assert 'setAttribute("style"' not in path.read_text()
