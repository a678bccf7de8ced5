"""The one reference normaliser (``stockade.images.reference``): every spelling Docker Hub
and containers/image accept for the same repository gives the same normal form, and
anything ambiguous or malformed is refused, never guessed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.images.errors import ImageError
from stockade.images.reference import (
    ImageReference,
    normalise_repository,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "repository"),
    [
        # Docker Hub's official images: every alias is docker.io/library/NAME
        ("xmrig", "docker.io/library/xmrig"),
        ("library/xmrig", "docker.io/library/xmrig"),
        ("docker.io/xmrig", "docker.io/library/xmrig"),
        ("docker.io/library/xmrig", "docker.io/library/xmrig"),
        ("index.docker.io/xmrig", "docker.io/library/xmrig"),
        ("index.docker.io/library/xmrig", "docker.io/library/xmrig"),
        # Docker Hub namespaces keep their namespace
        ("miner/xmrig", "docker.io/miner/xmrig"),
        ("docker.io/miner/xmrig", "docker.io/miner/xmrig"),
        ("index.docker.io/miner/xmrig", "docker.io/miner/xmrig"),
        # other registries are left exactly as written
        ("registry.example/org/app", "registry.example/org/app"),
        ("localhost/app", "localhost/app"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("127.0.0.1:5000/org/app", "127.0.0.1:5000/org/app"),
        ("quay.io/library/app", "quay.io/library/app"),  # library/ is Docker Hub's only
    ],
)
def test_every_alias_names_one_repository(text, repository):
    assert normalise_repository(text) == repository
    for suffix, tag, digest in (
        ("", None, None),
        (":v1.2", "v1.2", None),
        (f"@{DIGEST}", None, DIGEST),
        (f":v1.2@{DIGEST}", "v1.2", DIGEST),
    ):
        assert parse_reference(text + suffix) == ImageReference(repository, tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "XMRIG",  # path components are lowercase: no case folding, no guessing
        "Registry.Example/app",
        "registry.example/Org/app",
        "registry.example/org/app:",  # empty tag
        "registry.example/org/app:-v1",  # a tag cannot start with '-'
        "registry.example/org/app:" + "v" * 129,  # a tag is at most 128 characters
        "registry.example/org/app@sha256:" + "AB" * 32,  # digests are lowercase hex
        "registry.example/org/app@sha512:" + "ab" * 64,  # sha256 only
        "registry.example/org/app@sha256:abc",
        "registry.example//app",
        "registry.example/org/app/",
        "registry.example/org/-app",
        "registry.example/a" + "/a" * 200,  # longer than 255 characters
    ],
)
def test_malformed_references_are_refused(text):
    with pytest.raises(ImageError):
        parse_reference(text)


def test_a_default_tag_is_not_invented():
    # "app" is not "app:latest": a reference without a tag has none, so a signature for
    # app:latest does not silently cover whatever "app" resolves to later.
    assert parse_reference("registry.example/app").tag is None
    assert parse_reference("registry.example/app:latest").tag == "latest"


# no "." in components: with no domain, a first component with a dot would be a domain
_component = st.from_regex(r"[a-z0-9]{1,8}(?:[_-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_domain = st.sampled_from(
    ["", "docker.io/", "index.docker.io/", "registry.example/", "localhost:5000/"]
)
_tag = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True))


@given(_domain, st.lists(_component, min_size=1, max_size=3), _tag)
def test_the_normal_form_is_a_fixed_point(domain, path, tag):
    text = domain + "/".join(path) + ("" if tag is None else f":{tag}")
    parsed = parse_reference(text)
    assert parse_reference(str(parsed)) == parsed
    assert parsed.repository == normalise_repository(parsed.repository)
    assert not parsed.repository.startswith("index.docker.io")
