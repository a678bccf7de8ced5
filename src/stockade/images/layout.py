"""OCI image layouts (opencontainers/image-spec, "image-layout.md"), as umoci and
``skopeo copy ... oci:DIR:TAG`` write them: ``oci-layout``, ``index.json`` and
content-addressed ``blobs/sha256/<hex>``.

Tags are the ``org.opencontainers.image.ref.name`` annotations of ``index.json``'s
descriptors. Every blob read is hashed; bytes that do not match their digest raise
``ImageRejected(check="digest")``. Only sha256 digests are accepted.

Manifests and indexes are read strictly (``stockade.strict_json``): a key twice is
refused, and so is a key that differs from a field of the OCI structure only in case
(``"Layers"``): Go's encoding/json, which umoci and containerd read manifests with,
matches field names case-insensitively, so to them either is a second ``layers``.
Signing a manifest's digest signs one reading of it, never two.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.reference import DIGEST, TAG
from stockade.strict_json import loads_strict

LAYOUT_VERSION: Final = "1.0.0"
REF_NAME: Final = "org.opencontainers.image.ref.name"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES: Final = (OCI_MANIFEST, DOCKER_MANIFEST)
MAX_JSON_BLOB: Final = 4 * 1024 * 1024
"""Manifests, indexes and configs larger than this are refused (registries cap at 4 MiB)."""


DESCRIPTOR_FIELDS: Final = frozenset(
    {"mediaType", "digest", "size", "annotations", "urls", "platform", "artifactType", "data"}
)
MANIFEST_FIELDS: Final = frozenset(
    {"schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations"}
)
INDEX_FIELDS: Final = frozenset(
    {"schemaVersion", "mediaType", "artifactType", "manifests", "subject", "annotations"}
)
_FOLDED: Final = {
    name.casefold(): name for name in DESCRIPTOR_FIELDS | MANIFEST_FIELDS | INDEX_FIELDS
}


def _refuse_case_variants(document: Mapping[str, Any], where: str) -> None:
    """``ImageError`` for a key that is an OCI field name in another case (see above)."""
    for key in document:
        field_name = _FOLDED.get(key.casefold())
        if field_name is not None and key != field_name:
            raise ImageError(
                f"{where} has the key {key!r}, which Go's JSON decoder reads as "
                f"{field_name!r}: refused as a second reading"
            )


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            document["annotations"] = dict(self.annotations)
        return document

    @classmethod
    def from_json(cls, document: object, where: str) -> Descriptor:
        if not isinstance(document, dict):
            raise ImageError(f"{where} is not a JSON object")
        _refuse_case_variants(document, where)
        media_type = document.get("mediaType")
        digest = document.get("digest")
        size = document.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ImageError(f"{where}.mediaType is missing or not a string")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise ImageError(f"{where}.digest {digest!r} is not sha256:<64 lowercase hex>")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ImageError(f"{where}.size {size!r} is not a non-negative integer")
        annotations = document.get("annotations", {})
        if not isinstance(annotations, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in annotations.items()
        ):
            raise ImageError(f"{where}.annotations is not an object of strings")
        return cls(media_type, digest, size, dict(annotations))


@dataclass(frozen=True)
class ImageManifest:
    """The parts of an image manifest that verification reads."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    document = loads_strict(raw, what, max_size=MAX_JSON_BLOB, error=ImageError)
    if not isinstance(document, dict):
        raise ImageError(f"{what} is not a JSON object")
    _refuse_case_variants(document, what)
    return document


def parse_index(raw: bytes) -> tuple[Descriptor, ...]:
    """The descriptors of an ``index.json`` (an OCI image index)."""
    document = _json_object(raw, "index.json")
    if document.get("schemaVersion") != 2:
        raise ImageError("index.json schemaVersion is not 2")
    media_type = document.get("mediaType", OCI_INDEX)
    if media_type != OCI_INDEX:
        raise ImageError(f"index.json mediaType is '{media_type}', not '{OCI_INDEX}'")
    manifests = document.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError("index.json has no 'manifests' list")
    return tuple(
        Descriptor.from_json(entry, f"index.json manifests[{index}]")
        for index, entry in enumerate(manifests)
    )


def parse_manifest(raw: bytes, media_type: str | None = None) -> ImageManifest:
    """An image manifest (OCI or Docker schema 2); ``media_type`` is the descriptor's,
    which the manifest's own ``mediaType`` must not contradict."""
    document = _json_object(raw, "image manifest")
    if document.get("schemaVersion") != 2:
        raise ImageError("image manifest schemaVersion is not 2")
    own = document.get("mediaType")
    if own is not None and own not in MANIFEST_TYPES:
        raise ImageError(f"image manifest mediaType '{own}' is not an image manifest")
    if media_type is not None and media_type not in MANIFEST_TYPES:
        raise ImageError(f"descriptor mediaType '{media_type}' is not an image manifest")
    if own is not None and media_type is not None and own != media_type:
        raise ImageError(f"image manifest mediaType '{own}' differs from its descriptor's")
    if "manifests" in document:
        raise ImageError("image manifest has 'manifests': it is an index, not a manifest")
    config = Descriptor.from_json(document.get("config"), "image manifest config")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise ImageError("image manifest has no 'layers' list")
    annotations = document.get("annotations", {})
    if not isinstance(annotations, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in annotations.items()
    ):
        raise ImageError("image manifest annotations is not an object of strings")
    return ImageManifest(
        media_type=own or media_type or OCI_MANIFEST,
        config=config,
        layers=tuple(
            Descriptor.from_json(layer, f"image manifest layers[{index}]")
            for index, layer in enumerate(layers)
        ),
        annotations=dict(annotations),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ImageLayout:
    """An OCI image layout directory."""

    def __init__(self, path: Path, index: dict[str, Any]) -> None:
        self.path = path
        self._index = index

    @classmethod
    def open(cls, path: Path) -> ImageLayout:
        """Open an existing layout; ``ImageError`` when ``path`` is not one."""
        try:
            marker = (path / "oci-layout").read_bytes()
            index_raw = (path / "index.json").read_bytes()
        except OSError as error:
            raise ImageError(
                f"'{path}' is not an OCI image layout: {error.strerror or error}"
            ) from None
        version = _json_object(marker, "oci-layout").get("imageLayoutVersion")
        if version != LAYOUT_VERSION:
            raise ImageError(f"'{path}': imageLayoutVersion {version!r} is not '1.0.0'")
        parse_index(index_raw)
        return cls(path, _json_object(index_raw, "index.json"))

    def descriptors(self) -> tuple[Descriptor, ...]:
        """Every descriptor in ``index.json``, in order."""
        return parse_index(json.dumps(self._index).encode("utf-8"))

    def tags(self) -> tuple[str, ...]:
        return tuple(
            descriptor.annotations[REF_NAME]
            for descriptor in self.descriptors()
            if REF_NAME in descriptor.annotations
        )

    def find(self, tag: str) -> Descriptor | None:
        """The descriptor tagged ``tag``, or None; ``ImageError`` if several are."""
        found = [d for d in self.descriptors() if d.annotations.get(REF_NAME) == tag]
        if len(found) > 1:
            raise ImageError(f"'{self.path}' tags {len(found)} descriptors '{tag}'")
        return found[0] if found else None

    def resolve(self, tag: str) -> Descriptor:
        """The descriptor tagged ``tag`` in ``index.json``; ``ImageError`` if there is none."""
        descriptor = self.find(tag)
        if descriptor is None:
            known = ", ".join(sorted(self.tags())) or "none"
            raise ImageError(f"'{self.path}' has no image tagged '{tag}' (tags: {known})")
        return descriptor

    def _blob_path(self, digest: str) -> Path:
        if not DIGEST.fullmatch(digest):
            raise ImageError(f"'{digest}' is not a sha256 digest")
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def blob(self, digest: str) -> bytes:
        """The blob's bytes, once they hash to ``digest`` (``ImageRejected`` "digest" if not)."""
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(
                f"cannot read blob {digest} in '{self.path}': {error.strerror or error}"
            ) from None
        actual = sha256_digest(data)
        if actual != digest:
            raise ImageRejected("digest", f"blob {digest} in '{self.path}' hashes to {actual}")
        return data

    def manifest(self, descriptor: Descriptor) -> dict[str, Any]:
        """The manifest ``descriptor`` points at, as JSON, once its digest, size and
        structure check out."""
        raw = self.blob(descriptor.digest)
        if len(raw) != descriptor.size:
            raise ImageRejected(
                "digest",
                f"manifest {descriptor.digest} is {len(raw)} bytes, descriptor says "
                f"{descriptor.size}",
            )
        parse_manifest(raw, descriptor.media_type)
        return _json_object(raw, "image manifest")

    def add_blob(self, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        """Store ``data`` (if it is not there already) and describe it."""
        digest = sha256_digest(data)
        path = self._blob_path(digest)
        if not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(path, data)
            except OSError as error:
                raise ImageError(
                    f"cannot write blob into '{self.path}': {error.strerror or error}"
                ) from None
        return Descriptor(media_type, digest, len(data))

    def tag(self, descriptor: Descriptor, name: str) -> None:
        """Point tag ``name`` at ``descriptor``: ``index.json`` is rewritten atomically,
        any descriptor that carried the tag before loses it."""
        if not TAG.fullmatch(name):
            raise ImageError(f"'{name}' is not a valid tag")
        manifests = [
            entry
            for entry in self._index.get("manifests", [])
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("annotations"), dict)
                and entry["annotations"].get(REF_NAME) == name
            )
        ]
        entry = descriptor.to_json()
        entry["annotations"] = {**descriptor.annotations, REF_NAME: name}
        manifests.append(entry)
        index = {**self._index, "manifests": manifests}
        try:
            _atomic_write(self.path / "index.json", json.dumps(index).encode("utf-8"))
        except OSError as error:
            raise ImageError(
                f"cannot rewrite '{self.path / 'index.json'}': {error.strerror or error}"
            ) from None
        self._index = index


def parse_image_ref(text: str) -> tuple[Path, str]:
    """``LAYOUT_DIR:TAG`` -> (directory, tag); the last ``:`` separates them, and a
    reference without one (or whose last ``:`` is inside the directory's path) is tag
    ``latest``."""
    directory, colon, tag = text.rpartition(":")
    if not colon or "/" in tag:
        return Path(text), "latest"
    if not directory:
        raise ImageError(f"image '{text}' names no layout directory")
    if not TAG.fullmatch(tag):
        raise ImageError(f"image '{text}': '{tag}' is not a valid tag")
    return Path(directory), tag
