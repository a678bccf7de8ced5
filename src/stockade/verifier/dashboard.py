"""The read-only browser dashboard (issue 19): a single page at ``/ui`` and its assets at
``/ui/assets/{path}``, all shipped inside the package (``stockade/verifier/ui``): no CDN, no
external font, works air-gapped.

The shell and its assets hold no data, so they need no credential; every piece of data the
page shows comes from the reader API (``/v1/...``) with the ``stockade_session`` cookie the
page obtains at ``POST /v1/session`` (HttpOnly: scripts never see it; it satisfies
``require_reader`` only, so the dashboard can never change state).

Assets are served from a fixed set of file types with fixed content types; a path is a
sequence of lower-case names (no ``..``, no dot files, no backslash, no percent-encoding
tricks: the path is matched against a strict pattern and then resolved inside the package
directory). Every answer, including the 404, carries the security headers below: a
Content-Security-Policy that allows scripts, styles and connections to this origin only,
``nosniff``, no referrer, and no framing.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

router = APIRouter(tags=["dashboard"], include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent / "ui"
INDEX = "index.html"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "ico": "image/x-icon",
}
# Lower-case path segments of letters, digits, '-' and '_', the last with a known extension.
_SEGMENT = r"[a-z0-9][a-z0-9_-]{0,63}"
_ASSET = re.compile(rf"^(?:{_SEGMENT}/){{0,3}}{_SEGMENT}\.({'|'.join(CONTENT_TYPES)})$")
MAX_ASSET_BYTES = 2 * 1024 * 1024


def _headers(content_type: str, cache: str) -> dict[str, str]:
    return {**SECURITY_HEADERS, "Content-Type": content_type, "Cache-Control": cache}


def _not_found() -> Response:
    return Response(
        b"not found\n",
        status_code=404,
        headers=_headers("text/plain; charset=utf-8", "no-store"),
    )


def asset_file(path: str) -> Path | None:
    """The package file ``path`` names, or None: a path outside the strict pattern, a file
    outside the ui directory (a symbolic link, say), a directory, or a missing file."""
    if not _ASSET.match(path):
        return None
    try:
        found = (UI_DIR / path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not found.is_relative_to(UI_DIR) or not found.is_file():
        return None
    return found


def _serve(request: Request, path: str, cache: str) -> Response:
    found = asset_file(path)
    if found is None:
        return _not_found()
    try:
        body = found.read_bytes()
    except OSError:
        return _not_found()
    if len(body) > MAX_ASSET_BYTES:
        return _not_found()
    content_type = CONTENT_TYPES[path.rsplit(".", 1)[1]]
    headers = _headers(content_type, cache)
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers["ETag"] = etag
    if cache != "no-store" and request.headers.get("if-none-match") == etag:
        del headers["Content-Type"]
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        return Response(status_code=200, headers={**headers, "Content-Length": str(len(body))})
    return Response(body, headers=headers)


@router.api_route("/ui", methods=["GET", "HEAD"], response_class=Response)
@router.api_route("/ui/", methods=["GET", "HEAD"], response_class=Response)
def index(request: Request) -> Response:
    """The dashboard's page (no data in it: it asks the reader API for everything)."""
    return _serve(request, INDEX, "no-store")


@router.api_route("/ui/assets/{path:path}", methods=["GET", "HEAD"], response_class=Response)
def asset(path: str, request: Request) -> Response:
    """A script, style sheet or image of the dashboard, from the package only; 404 for
    anything else. Revalidated on each load (``no-cache`` with an ``ETag``), so an upgraded
    verifier never serves a browser a stale script."""
    return _serve(request, path, "no-cache")


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"], response_class=Response)
def elsewhere(path: str) -> Response:
    """Anything else under /ui: 404, with the same headers."""
    return _not_found()
