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
