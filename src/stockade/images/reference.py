"""Docker image references ("registry.example/org/app:1.0", "alpine@sha256:...") and the
one normal form Stockade compares them in.

The grammar is the distribution reference grammar, kept strict:

- ``[domain/]path[:tag][@digest]``; the domain is the first ``/``-separated component
  when it contains a ``.`` or a ``:`` (a port), or is ``localhost``; otherwise there is
  no domain and the reference is on Docker Hub;
- domains and path components are lowercase (``[a-z0-9]`` runs joined by ``.``, ``_``,
  ``__`` or dashes; domains by ``.``/``-``, with an optional ``:port``); a tag is
  ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a digest is ``sha256:`` and 64 lowercase hex
  digits (no other algorithm is accepted);
- normalisation is Docker Hub's and nothing else: no domain, or ``index.docker.io``,
  becomes ``docker.io``, and a one-component path on ``docker.io`` gets ``library/``.
  So ``alpine``, ``docker.io/alpine``, ``index.docker.io/library/alpine`` all name the
  repository ``docker.io/library/alpine``. No other rewriting (no case folding, no
  default tag: a reference without a tag has none).

Trust policy scopes (``check_scope``, ``scope_covers``) live in the same normal form and
are matched on whole path components, so a scope means what the references it is meant
for normalise to. A scope normalisation would rewrite is refused rather than rewritten
(the signed policy says exactly what it covers), and so is ``docker.io/NAME``: ``NAME``
alone is the official image ``docker.io/library/NAME``, which that prefix does not cover.
The author writes ``docker.io/library/NAME`` for the image, or ``docker.io/NAME/`` (the
one place a scope ends in ``/``) for the repositories of the Docker Hub namespace
``NAME``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stockade.images.errors import ImageError

DOCKER_HUB = "docker.io"
LEGACY_DOCKER_HUB = "index.docker.io"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]{{1,5}})?")
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised reference: ``repository`` always carries its domain."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _is_domain(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def normalise_repository(name: str) -> str:
    """``[domain/]path`` in its normal form (``docker.io/library/x`` for ``x``)."""
    if not name:
        raise ImageError("image reference has an empty repository name")
    head, sep, rest = name.partition("/")
    if sep and _is_domain(head):
        domain, path = head, rest
    else:
        domain, path = DOCKER_HUB, name
    if not DOMAIN.fullmatch(domain):
        raise ImageError(f"image reference '{name}': '{domain}' is not a registry domain")
    components = path.split("/")
    for component in components:
        if not PATH_COMPONENT.fullmatch(component):
            raise ImageError(
                f"image reference '{name}': path component '{component}' is not lowercase "
                "[a-z0-9] runs joined by '.', '_', '__' or '-'"
            )
    if domain == LEGACY_DOCKER_HUB:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and len(components) == 1:
        components.insert(0, "library")
    repository = f"{domain}/{'/'.join(components)}"
    if len(repository) > MAX_NAME_LENGTH:
        raise ImageError(f"image reference '{name}' is longer than {MAX_NAME_LENGTH} characters")
    return repository


def parse_reference(text: str) -> ImageReference:
    """Parse and normalise ``[domain/]path[:tag][@sha256:hex]``; ``ImageError`` if it is
    not one."""
    name, at, digest = text.partition("@")
    if at and not DIGEST.fullmatch(digest):
        raise ImageError(f"image reference '{text}': '{digest}' is not a sha256 digest")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag: str | None = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not TAG.fullmatch(tag):
            raise ImageError(f"image reference '{text}': '{tag}' is not a valid tag")
    return ImageReference(normalise_repository(name), tag, digest if at else None)


def check_scope(prefix: str) -> str:
    """``prefix`` when it is a trust-policy scope in normal form that means one thing
    (see the module docstring); ``ImageError`` saying what to write instead otherwise."""
    domain, slash, path = prefix.partition("/")
    if not _is_domain(domain) or not DOMAIN.fullmatch(domain):
        raise ImageError(
            f"scope '{prefix}' does not start with a registry domain "
            "(e.g. 'registry.example/org' or 'docker.io/library')"
        )
    if domain == LEGACY_DOCKER_HUB:
        raise ImageError(f"scope '{prefix}': write '{DOCKER_HUB}', not '{domain}'")
    namespace = path.endswith("/")
    components = path.removesuffix("/").split("/") if path else []
    if slash and not components:
        raise ImageError(f"scope '{prefix}': write '{domain}' (no trailing '/')")
    for component in components:
        if not PATH_COMPONENT.fullmatch(component):
            raise ImageError(
                f"scope '{prefix}': path component '{component}' is not lowercase "
                "[a-z0-9] runs joined by '.', '_', '__' or '-'"
            )
    if len(prefix) > MAX_NAME_LENGTH:
        raise ImageError(f"scope '{prefix}' is longer than {MAX_NAME_LENGTH} characters")
    hub_namespace = domain == DOCKER_HUB and len(components) == 1 and components[0] != "library"
    if namespace and not hub_namespace:
        raise ImageError(
            f"scope '{prefix}': only a Docker Hub namespace ('docker.io/NAME/') ends in '/'; "
            f"write '{prefix.removesuffix('/')}'"
        )
    if hub_namespace and not namespace:
        name = components[0]
        raise ImageError(
            f"scope '{prefix}' is ambiguous: the image '{name}' is "
            f"'{DOCKER_HUB}/library/{name}', which this prefix does not cover; write "
            f"'{DOCKER_HUB}/library/{name}' for that official image, or '{DOCKER_HUB}/{name}/' "
            f"for the repositories of the Docker Hub namespace '{name}' ('{name}/...')"
        )
    return prefix


def scope_covers(prefix: str, repository: str) -> bool:
    """Whether the scope ``prefix`` (``check_scope``) covers the normalised ``repository``:
    equal to it, or a prefix of it ending at a ``/``; ``docker.io/NAME/`` covers only
    what is under it."""
    if prefix.endswith("/"):
        return repository.startswith(prefix)
    return repository == prefix or repository.startswith(prefix + "/")
