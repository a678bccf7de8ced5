"""``stockade image sign|verify`` and ``stockade image policy sign|verify``: cosign-style
image signatures in OCI image layouts, checked against an org-signed trust policy."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.cli._input import emit_json, read_file
from stockade.cli.options import FormatOption, OutputFormat
from stockade.errors import InputError, VerificationFailed
from stockade.images.errors import ImageRejected
from stockade.images.layout import ImageLayout, parse_image_ref
from stockade.images.policy import (
    LEGACY_VERSION,
    MAX_POLICY,
    TrustPolicy,
    format_expires,
    load_trust_policy,
    policy_summary,
    sign_trust_policy,
)
from stockade.images.reference import parse_reference
from stockade.images.signature import sign_image
from stockade.images.verify import verify_image
from stockade.release.keys import keyid, load_signing_key, load_verifying_key
from stockade.strict_json import loads_strict

app = typer.Typer(no_args_is_help=True, help="Sign and verify container images (OCI layouts).")
policy_app = typer.Typer(no_args_is_help=True, help="The org-signed image trust policy.")
app.add_typer(policy_app, name="policy")

ImageArgument = Annotated[
    str, typer.Argument(metavar="LAYOUT:TAG", help="OCI image layout directory and tag")
]
OrgPubOption = Annotated[
    list[Path], typer.Option("--org-pub", help="trusted org public key (PEM); repeatable")
]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_policy(path: Path, org_pub: list[Path]) -> TrustPolicy:
    """The policy at ``path`` signed by an org key, refused if it has expired."""
    keys = [load_verifying_key(read_file(p, "org public key"), f"key '{p}'") for p in org_pub]
    return load_trust_policy(read_file(path, "trust policy"), keys, now=_now())


def _validity(policy: TrustPolicy) -> str:
    if policy.expires is None:
        return "version 1: no serial, never expires, no rollback protection"
    return f"serial {policy.serial}, expires {format_expires(policy.expires)}"


def _fail_json(failure: VerificationFailed) -> None:
    document: dict[str, Any] = {"valid": False, "reason": str(failure)}
    if isinstance(failure, ImageRejected):
        document["check"] = failure.check
    emit_json(document)


@app.command("sign")
def sign(
    image: ImageArgument,
    key: Annotated[Path, typer.Option(help="image signing key: PEM PKCS#8, ECDSA P-256")],
    reference: Annotated[
        str, typer.Option(help="docker reference to sign for, e.g. registry.example/org/app:1.0")
    ],
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Sign the image's manifest digest (a cosign simple-signing payload) and store the
    signature in the same layout, tagged sha256-<hex>.sig."""
    private = load_signing_key(read_file(key, "signing key"), f"key '{key}'")
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise InputError(f"key '{key}' is Ed25519; image signatures are ECDSA P-256")
    directory, tag = parse_image_ref(image)
    layout = ImageLayout.open(directory)
    sig_tag = sign_image(layout, tag, reference, private)
    document = {
        "image": image,
        "manifest_digest": layout.resolve(tag).digest,
        "reference": str(parse_reference(reference)),
        "signature_tag": sig_tag,
        "keyid": keyid(private.public_key()),
    }
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    typer.echo(f"signed {document['manifest_digest']} as {document['reference']}")
    typer.echo(f"signature: {directory}:{sig_tag}")


@app.command("verify")
def verify(
    image: ImageArgument,
    reference: Annotated[str, typer.Option(help="the reference the image must be signed for")],
    policy: Annotated[Path, typer.Option(help="trust policy envelope (POLICY.dsse.json)")],
    org_pub: OrgPubOption,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Exit 0 when a signature the trust policy accepts covers the image and every blob
    checks out, 1 with the failed check when not, 2 on unreadable input."""
    directory, tag = parse_image_ref(image)
    try:
        trust = _load_policy(policy, org_pub)
        verified = verify_image(ImageLayout.open(directory), tag, reference, trust)
    except VerificationFailed as failure:
        if output is OutputFormat.JSON:
            _fail_json(failure)
        raise
    document = {"valid": True, **verified.to_json(), "policy_digest": trust.digest}
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    typer.echo(
        f"image {verified.manifest_digest} valid: signed for {verified.reference} "
        f"by '{verified.signer}'"
    )
    typer.echo(f"trust policy: {trust.digest}")


@policy_app.command("sign")
def policy_sign(
    document: Annotated[Path, typer.Argument(metavar="POLICY.json", help="trust policy JSON")],
    key: Annotated[Path, typer.Option(help="org signing key (PEM)")],
    out: Annotated[Path, typer.Option(help="envelope to write (POLICY.dsse.json)")],
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Sign a trust policy (canonicalised first) into a DSSE envelope. A version 2 policy
    carries its serial (higher than the policy it replaces) and its expiry; one already
    expired is refused."""
    content = loads_strict(
        read_file(document, "trust policy"),
        f"trust policy '{document}'",
        max_size=MAX_POLICY,
        error=InputError,
    )
    if not isinstance(content, dict):
        raise InputError(f"trust policy '{document}' is not a JSON object")
    org_key = load_signing_key(read_file(key, "org signing key"), f"key '{key}'")
    envelope = sign_trust_policy(content, org_key)
    summary = load_trust_policy(envelope, [org_key.public_key()])
    now = _now()
    if summary.expired(now):
        assert summary.expires is not None
        raise InputError(
            f"trust policy '{document}' expires {format_expires(summary.expires)}, which is "
            f"already past (now {format_expires(now)}): nodes would refuse it"
        )
    if summary.version == LEGACY_VERSION:
        typer.echo(
            f"stockade: warning: trust policy '{document}' is format version 1, without serial "
            "or expiry: nodes cannot refuse it as a rollback (write version 2, docs/images.md)",
            err=True,
        )
    try:
        out.write_bytes(envelope)
    except OSError as error:
        raise InputError(f"cannot write '{out}': {error.strerror or error}") from None
    if output is OutputFormat.JSON:
        emit_json({**policy_summary(summary), "envelope": str(out)})
        return
    typer.echo(f"signed trust policy {summary.digest} ({_validity(summary)}): {out}")


@policy_app.command("verify")
def policy_verify(
    envelope: Annotated[Path, typer.Argument(metavar="POLICY.dsse.json")],
    org_pub: OrgPubOption,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check a trust policy envelope (signature, form, not expired) and print its digest
    (what a node measures), serial and expiry."""
    try:
        trust = _load_policy(envelope, org_pub)
    except VerificationFailed as failure:
        if output is OutputFormat.JSON:
            _fail_json(failure)
        raise
    summary = policy_summary(trust)
    if output is OutputFormat.JSON:
        emit_json({"valid": True, **summary})
        return
    typer.echo(f"trust policy {trust.digest} valid ({_validity(trust)})")
    for scope in summary["scopes"]:
        typer.echo(f"  {scope['prefix']}: {', '.join(scope['keys']) or '(reject)'}")
