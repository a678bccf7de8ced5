"""Release manifests: canonical form, schema checks, the usrhash binding, signing,
rollback protection, and re-checking artifacts on disk."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import random
from pathlib import Path
from uuid import UUID

import pytest

from stockade.release import dsse
from stockade.release.build import (
    ReleaseInputs,
    build_release,
    verify_artifacts,
)
from stockade.release.cmdline import CmdlineRefused, systemd_split
from stockade.release.errors import (
    ManifestMalformed,
    ReleaseError,
    ReleaseInvalid,
    SignatureInvalid,
    VerityMismatch,
)
from stockade.release.keys import KeyType, generate_signing_key
from stockade.release.manifest import (
    PAYLOAD_TYPE,
    FileDigest,
    KernelFile,
    Manifest,
    UsrImage,
    VerityInfo,
    bind_usrhash,
    canonical_json,
    manifest_digest,
    open_signed_manifest,
    sign_manifest,
)

CREATED = dt.datetime(2026, 5, 1, 8, 30, tzinfo=dt.UTC)
ROOT = bytes(range(32))
EVIL = "ee" * 32
# The finding: str.split sees one usrhash=, systemd unquotes the second and takes the last.
FORGED = f'console=ttyS0 ro usrhash={ROOT.hex()} "usrhash={EVIL}"'


def make_manifest(**changes: object) -> Manifest:
    verity = VerityInfo(
        root_hash=ROOT,
        salt=b"\x01" * 32,
        hash_algorithm="sha256",
        data_block_size=4096,
        hash_block_size=4096,
        data_blocks=10,
        uuid=UUID("11111111-2222-4333-8444-555555555555"),
        hash_file=FileDigest("usr.verity", 8192, b"\x02" * 32),
    )
    fields: dict[str, object] = {
        "name": "stockade-os",
        "version": "1.0",
        "security_version": 5,
        "created": CREATED,
        "cmdline": f"console=ttyS0 ro usrhash={ROOT.hex()}",
        "kernel": KernelFile(FileDigest("vmlinuz", 100, b"\x03" * 32), b"\x04" * 32),
        "initrd": FileDigest("initrd.img", 50, b"\x05" * 32),
        "usr": UsrImage("usr.img", 40960, verity),
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_canonical_bytes_are_sorted_compact_and_the_digest_is_their_sha256():
    manifest = make_manifest()
    raw = manifest.canonical_bytes()
    document = json.loads(raw)
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert b" " not in raw.replace(manifest.cmdline.encode(), b"")
    assert raw.startswith(b'{"cmdline":') and raw.endswith(b'"version":"1.0"}')
    assert manifest_digest(manifest) == hashlib.sha256(raw).digest()
    assert document["schema_version"] == 1
    assert document["created"] == "2026-05-01T08:30:00Z"
    assert document["kernel"]["authenticode_sha256"] == "04" * 32
    assert document["usr"]["verity"]["hash_file"]["path"] == "usr.verity"
    assert Manifest.from_bytes(raw, require_canonical=True) == manifest


def test_every_field_change_changes_the_digest():
    base = manifest_digest(make_manifest())
    variants = [
        make_manifest(version="1.1"),
        make_manifest(security_version=6),
        make_manifest(created=CREATED + dt.timedelta(seconds=1)),
        make_manifest(cmdline=f"console=ttyS1 ro usrhash={ROOT.hex()}"),
        make_manifest(initrd=FileDigest("initrd.img", 51, b"\x05" * 32)),
    ]
    digests = {manifest_digest(variant) for variant in variants}
    assert base not in digests and len(digests) == len(variants)


def test_non_canonical_signed_payload_is_rejected():
    raw = json.dumps(make_manifest().to_json(), indent=1).encode()
    assert Manifest.from_bytes(raw) == make_manifest()
    with pytest.raises(ManifestMalformed, match="canonical"):
        Manifest.from_bytes(raw, require_canonical=True)


def test_cmdline_must_carry_exactly_the_usr_root_hash():
    with pytest.raises(ManifestMalformed, match="usrhash"):
        make_manifest(cmdline="console=ttyS0 ro")
    with pytest.raises(ManifestMalformed, match="usrhash"):
        make_manifest(cmdline=f"ro usrhash={'ff' * 32}")
    with pytest.raises(ManifestMalformed, match="usrhash"):
        make_manifest(cmdline=f"ro usrhash={ROOT.hex()} usrhash={'ff' * 32}")


def test_bind_usrhash_appends_keeps_or_refuses():
    assert bind_usrhash("quiet ro", ROOT) == f"quiet ro usrhash={ROOT.hex()}"
    assert bind_usrhash("", ROOT) == f"usrhash={ROOT.hex()}"
    assert bind_usrhash(f"usrhash={ROOT.hex()} ro", ROOT) == f"usrhash={ROOT.hex()} ro"
    with pytest.raises(ManifestMalformed):
        bind_usrhash(f"usrhash={'00' * 32}", ROOT)


def test_a_quoted_second_usrhash_is_refused_although_str_split_sees_one():
    assert [word for word in FORGED.split() if word.startswith("usrhash=")] == [
        f"usrhash={ROOT.hex()}"
    ]  # what the check used to see
    assert systemd_split(FORGED)[-1] == f"usrhash={EVIL}"  # the root hash systemd opens /usr with
    with pytest.raises(CmdlineRefused, match=f'usrhash 2 times .*"usrhash={EVIL}"'):
        make_manifest(cmdline=FORGED)
    with pytest.raises(CmdlineRefused, match=f'"usrhash={EVIL}"'):
        Manifest.from_bytes(canonical_json(make_manifest().to_json() | {"cmdline": FORGED}))
    with pytest.raises(CmdlineRefused, match=f'"usrhash={EVIL}"'):
        bind_usrhash(FORGED, ROOT)


def test_an_unbalanced_quote_that_swallows_the_appended_usrhash_is_refused():
    cmdline = 'console=ttyS0 ro "'
    appended = f"{cmdline} usrhash={ROOT.hex()}"  # what bind_usrhash used to return
    assert f"usrhash={ROOT.hex()}" in appended.split()  # the check used to see the binding
    assert systemd_split(appended)[-1] == f" usrhash={ROOT.hex()}"  # systemd sees no usrhash=
    with pytest.raises(CmdlineRefused, match="quotes may only surround"):
        bind_usrhash(cmdline, ROOT)
    with pytest.raises(CmdlineRefused, match="quotes may only surround"):
        make_manifest(cmdline=appended)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["kernel", "path"], "../../etc/shadow"),
        (["initrd", "path"], "/boot/initrd"),
        (["usr", "verity", "hash_file", "path"], ".hidden"),
        (["security_version"], True),
        (["security_version"], -1),
        (["security_version"], "5"),
        (["kernel", "sha256"], "AB" * 32),
        (["kernel", "sha256"], "ab" * 31),
        (["usr", "verity", "salt"], "0 1"),
        (["usr", "verity", "uuid"], "not-a-uuid"),
        (["created"], "2026-05-01 08:30:00"),
        (["schema_version"], 2),
        (["usr", "size"], 4096),
    ],
)
def test_schema_violations_are_typed_errors(path, value):
    document = make_manifest().to_json()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ManifestMalformed):
        Manifest.from_json(document)


def test_unknown_and_missing_fields_are_rejected():
    document = make_manifest().to_json()
    document["kernel"]["signed_by"] = "someone"
    with pytest.raises(ManifestMalformed, match="unknown"):
        Manifest.from_json(document)
    document = make_manifest().to_json()
    del document["initrd"]
    with pytest.raises(ManifestMalformed, match="lacks initrd"):
        Manifest.from_json(document)


@pytest.fixture
def org_key():
    return generate_signing_key(KeyType.ED25519)


def test_signed_manifest_opens_and_rollback_is_refused(org_key):
    manifest = make_manifest(security_version=5)
    envelope = sign_manifest(manifest, [org_key])
    assert envelope.payload_type == PAYLOAD_TYPE
    opened, _ = open_signed_manifest(envelope, [org_key.public_key()], min_security_version=5)
    assert opened == manifest
    with pytest.raises(ReleaseInvalid, match="below the minimum 6"):
        open_signed_manifest(envelope, [org_key.public_key()], min_security_version=6)


def test_a_validly_signed_non_manifest_payload_is_refused(org_key):
    envelope = dsse.sign(b'{"not": "a manifest"}', PAYLOAD_TYPE, [org_key])
    with pytest.raises(ManifestMalformed):
        open_signed_manifest(envelope, [org_key.public_key()])
    other_type = dsse.sign(make_manifest().canonical_bytes(), "application/json", [org_key])
    with pytest.raises(SignatureInvalid, match="payloadType"):
        open_signed_manifest(other_type, [org_key.public_key()])


def test_a_signed_manifest_with_a_quoted_second_usrhash_is_an_invalid_release(org_key):
    """Signed by a Stockade without the check (or by hand): opening it still refuses it."""
    forged = canonical_json(make_manifest().to_json() | {"cmdline": FORGED})
    envelope = dsse.sign(forged, PAYLOAD_TYPE, [org_key])
    with pytest.raises(ReleaseInvalid, match=f'signed release refused: .*"usrhash={EVIL}"'):
        open_signed_manifest(envelope, [org_key.public_key()])


# On disk.


def write_inputs(tmp_path: Path, usr_size: int = 300_000) -> ReleaseInputs:
    rng = random.Random(5)
    (tmp_path / "kernel").write_bytes(rng.randbytes(5000))
    (tmp_path / "initrd").write_bytes(rng.randbytes(3000))
    (tmp_path / "usr.raw").write_bytes(rng.randbytes(usr_size))
    return ReleaseInputs(
        name="stockade-os",
        version="2.0",
        security_version=7,
        kernel=tmp_path / "kernel",
        initrd=tmp_path / "initrd",
        cmdline="console=ttyS0 ro",
        usr_image=tmp_path / "usr.raw",
    )


def test_build_pads_usr_image_and_records_consistent_digests(tmp_path):
    inputs = write_inputs(tmp_path, usr_size=300_000)
    out = tmp_path / "release"
    manifest = build_release(inputs, out, CREATED)
    assert manifest.usr.size == 303104 == (out / "usr.img").stat().st_size
    assert (out / "usr.img").read_bytes() == (tmp_path / "usr.raw").read_bytes() + bytes(3104)
    assert manifest.kernel.authenticode_sha256 is None  # random bytes are not a PE image
    assert manifest.kernel.file.sha256 == hashlib.sha256(inputs.kernel.read_bytes()).digest()
    assert (out / "manifest.json").read_bytes() == manifest.canonical_bytes()
    verify_artifacts(manifest, out)


def test_same_inputs_salt_and_uuid_build_the_same_manifest(tmp_path):
    inputs = write_inputs(tmp_path)
    salt, uuid = b"\x09" * 32, UUID("99999999-8888-4777-8666-555555555555")
    first = build_release(inputs, tmp_path / "a", CREATED, salt=salt, uuid=uuid)
    second = build_release(inputs, tmp_path / "b", CREATED, salt=salt, uuid=uuid)
    assert manifest_digest(first) == manifest_digest(second)


def test_build_refuses_a_non_empty_directory(tmp_path):
    inputs = write_inputs(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with pytest.raises(ReleaseError, match="not empty"):
        build_release(inputs, tmp_path / "out", CREATED)


def test_swapped_initrd_and_modified_usr_block_are_found(tmp_path):
    out = tmp_path / "release"
    manifest = build_release(write_inputs(tmp_path), out, CREATED)
    original_initrd = (out / "initrd.img").read_bytes()
    (out / "initrd.img").write_bytes(b"evil" + original_initrd[4:])
    with pytest.raises(ReleaseInvalid, match=r"initrd\.img: sha256"):
        verify_artifacts(manifest, out)
    (out / "initrd.img").write_bytes(original_initrd)
    image = bytearray((out / "usr.img").read_bytes())
    image[20 * 4096 + 7] ^= 0xFF
    (out / "usr.img").write_bytes(image)
    with pytest.raises(VerityMismatch, match=r"usr\.img: data block 20 ") as failure:
        verify_artifacts(manifest, out)
    assert failure.value.data_block == 20


def test_a_regenerated_hash_tree_for_modified_data_is_caught(tmp_path):
    """An attacker who changes /usr and rebuilds a valid tree for it changes the hash file
    and the root hash; neither matches the signed manifest."""
    out = tmp_path / "release"
    manifest = build_release(write_inputs(tmp_path), out, CREATED)
    image = bytearray((out / "usr.img").read_bytes())
    image[0] ^= 1
    (out / "usr.img").write_bytes(image)
    from stockade.release.verity import format_hash_device

    verity = manifest.usr.verity
    format_hash_device(out / "usr.img", out / "usr.verity", salt=verity.salt, uuid=verity.uuid)
    with pytest.raises(ReleaseInvalid, match=r"usr\.verity: sha256"):
        verify_artifacts(manifest, out)
    forged = dataclasses.replace(
        manifest.usr.verity,
        hash_file=FileDigest(
            "usr.verity",
            (out / "usr.verity").stat().st_size,
            hashlib.sha256((out / "usr.verity").read_bytes()).digest(),
        ),
    )
    partly_updated = dataclasses.replace(
        manifest, usr=dataclasses.replace(manifest.usr, verity=forged)
    )
    with pytest.raises(VerityMismatch):
        verify_artifacts(partly_updated, out)


def test_build_refuses_a_quoted_second_usrhash_before_writing_anything(tmp_path):
    inputs = write_inputs(tmp_path)
    salt, uuid = b"\x09" * 32, UUID("99999999-8888-4777-8666-555555555555")
    good = build_release(inputs, tmp_path / "a", CREATED, salt=salt, uuid=uuid)
    root = good.usr.verity.root_hash.hex()
    forged = dataclasses.replace(inputs, cmdline=f'ro usrhash={root} "usrhash={EVIL}"')
    with pytest.raises(CmdlineRefused, match=f'"usrhash={EVIL}"'):
        build_release(forged, tmp_path / "b", CREATED, salt=salt, uuid=uuid)
    assert not (tmp_path / "b").exists()


def test_duplicate_keys_in_an_envelope_or_a_manifest_are_refused(org_key):
    """A reader that keeps the first of two keys and one that keeps the last would see two
    documents behind one signature: both are refused by name."""
    from stockade.release.errors import EnvelopeMalformed

    envelope = sign_manifest(make_manifest(), [org_key])
    genuine = json.loads(envelope.to_bytes())
    other = base64_payload(make_manifest(security_version=9).canonical_bytes())
    twice = envelope.to_bytes().replace(
        b'"payloadType"', b'"payload": "' + other.encode() + b'",\n  "payloadType"', 1
    )
    assert json.loads(twice)["payload"] == other != genuine["payload"]  # last wins in json
    with pytest.raises(EnvelopeMalformed, match="key 'payload' twice"):
        dsse.Envelope.from_bytes(twice)
    body = make_manifest().canonical_bytes()
    duplicated = body.replace(b'{"cmdline"', b'{"cmdline":"ro","cmdline"', 1)
    with pytest.raises(ManifestMalformed, match="key 'cmdline' twice"):
        Manifest.from_bytes(duplicated)


def base64_payload(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.mark.parametrize("label", ["", "caf\u00e9", "a\nb", "x" * 129, "tab\there"])
def test_names_and_versions_are_printable_ascii(label):
    for field in ("name", "version"):
        with pytest.raises(ManifestMalformed, match=f"{field} .* printable ASCII"):
            make_manifest(**{field: label})


def test_canonical_bytes_are_the_same_under_any_json_escaping():
    """The shared canonical form (UTF-8) and the ASCII form manifests were signed in before
    are byte for byte equal, so no signed release changes its digest."""
    manifest = make_manifest(name="Debian GNU/Linux", version="13.1 (trixie)")
    document = manifest.to_json()
    ascii_form = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert manifest.canonical_bytes() == ascii_form.encode("ascii")
