"""``stockade policy apply|show|list``: appraisal policy documents at the verifier
(``apply --dry-run``: what a document would change, nothing stored);
``stockade policy new|add-release|validate|diff|schema``: writing and checking policy files;
``stockade policy capture``: a golden-machine policy from a known-good event log, offline;
``stockade policy merge``: the captured policies of several machines as one, offline."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json, read_document, read_file
from stockade.cli._text import cell, inline
from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    ReadTokenOption,
    TokenFileOption,
    VerifierOption,
    client,
)
from stockade.errors import InputError, StockadeError

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Appraisal policies (versioned documents).")


PEM_BEGIN = "-----BEGIN"
_MAX_FILE = 16 << 20  # a platform reference or DSSE envelope named by path


def read_policy(path: Path) -> dict[str, Any]:
    """A policy document from YAML or JSON (``strict_yaml``); it must name its ``id``. Files
    it names by path are read in (``resolve_paths``), so the result is what the verifier
    stores."""
    return resolve_paths(read_document(path, "policy", named_by="id"), path.parent)


def _read_named(path: Path, where: str) -> bytes:
    from stockade.appraisal.policy import PolicyInvalid

    try:
        return path.read_bytes()
    except OSError as error:
        raise PolicyInvalid(where, f"cannot read '{path}': {error.strerror or error}") from None


def _json_file(path: Path, where: str) -> Any:
    from stockade.appraisal.policy import PolicyInvalid
    from stockade.strict_json import loads_strict

    try:
        return loads_strict(_read_named(path, where), f"'{path}'", max_size=_MAX_FILE)
    except (ValueError, StockadeError) as error:
        raise PolicyInvalid(where, f"'{path}' is not JSON: {error}") from None


def resolve_paths(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """``document`` with its by-path forms read in, each path relative to ``base`` (the
    policy file's directory): a signer that is not PEM text (``releases.signer``,
    ``releases.signers[i]``), a manifest that is not JSON text (a DSSE envelope file), a
    platform given as a string (a ``platform.json``) and ``captured`` given as a string (a
    captured policy). ``PolicyInvalid`` names the field whose file cannot be read."""
    from stockade.appraisal.policy import PolicyInvalid
    from stockade.strict_yaml import load_yaml

    resolved = dict(document)
    releases = resolved.get("releases")
    if isinstance(releases, dict):
        releases = dict(releases)
        if isinstance(releases.get("signer"), str) and PEM_BEGIN not in releases["signer"]:
            path = base / releases["signer"]
            releases["signer"] = _read_named(path, "releases.signer").decode(errors="replace")
        if isinstance(releases.get("signers"), list):
            releases["signers"] = [
                _read_named(base / item, f"releases.signers[{index}]").decode(errors="replace")
                if isinstance(item, str) and item.strip() and PEM_BEGIN not in item
                else item
                for index, item in enumerate(releases["signers"])
            ]
        if isinstance(releases.get("manifests"), list):
            releases["manifests"] = [
                _json_file(base / item, f"releases.manifests[{index}]")
                if isinstance(item, str) and item.strip() and not item.lstrip().startswith("{")
                else item
                for index, item in enumerate(releases["manifests"])
            ]
        resolved["releases"] = releases
    if isinstance(resolved.get("platforms"), list):
        resolved["platforms"] = [
            _json_file(base / item, f"platforms[{index}]") if isinstance(item, str) else item
            for index, item in enumerate(resolved["platforms"])
        ]
    if isinstance(resolved.get("captured"), str):
        path = base / resolved["captured"]
        try:
            resolved["captured"] = load_yaml(_read_named(path, "captured"), f"'{path}'")
        except InputError as error:
            raise PolicyInvalid("captured", str(error)) from None
    return resolved


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="policy document (YAML or JSON)")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="store nothing: show how many enrolled nodes would change status under it",
        ),
    ] = False,
) -> None:
    """Store the document as a new version of its policy. Needs the operator token.

    With --dry-run the verifier re-appraises every enrolled node's latest quoted PCR values
    under the document and stores nothing."""
    document = read_policy(file)
    if dry_run:
        with client(verifier, ca, token_file) as api:
            answer = api.request("POST", f"/v1/policies/{document['id']}/dry-run", document)
        if output is OutputFormat.JSON:
            emit_json(answer)
            return
        _print_dry_run(answer)
        return
    with client(verifier, ca, token_file) as api:
        stored = api.apply_policy(document["id"], document)
    if output is OutputFormat.JSON:
        emit_json(stored)
        return
    stored_id = inline(stored.get("id", document["id"]))
    typer.echo(f"policy {stored_id} version {inline(stored.get('version'))}")


def _print_dry_run(answer: dict[str, Any]) -> None:
    typer.echo(
        f"dry run of {inline(answer.get('ref'))} (nothing stored): "
        f"{inline(answer.get('changed'))} of {inline(answer.get('nodes'))} enrolled nodes "
        f"would change status, {inline(answer.get('unknown'))} cannot be told"
    )
    for change in answer.get("changes") or []:
        typer.echo(
            f"  {inline(change.get('name'))}: {inline(change.get('from')) or 'no result'} -> "
            f"{inline(change.get('to'))}: {inline(change.get('reason'))}"
        )
    for node in answer.get("unknown_nodes") or []:
        typer.echo(f"  {inline(node.get('name'))}: unknown: {inline(node.get('reason'))}")


class PolicyCheckFailed(StockadeError):
    """A policy document that parse_policy (or its references) refuses: exit 1."""

    exit_code = 1
    code = "policy-invalid"


def check_policy(document: dict[str, Any]) -> Any:
    """The parsed policy and its references, as the verifier would build them; a refusal
    is ``PolicyCheckFailed`` naming the field (``releases.manifests[0]: ...``)."""
    from stockade.appraisal.appraise import build_references
    from stockade.appraisal.policy import PolicyInvalid, parse_policy

    try:
        policy = parse_policy(document, 1)
        return policy, build_references(policy)
    except PolicyInvalid as error:
        raise PolicyCheckFailed(f"{error.field}: {error.detail}") from None
    except StockadeError as error:
        raise PolicyCheckFailed(f"document: {error}") from None


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="policy document (YAML or JSON)")],
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check a policy offline as the verifier would: exit 0, or 1 with the first bad field.

    Files named by path are read relative to the policy file; every manifest must verify
    under the signers at or above min_security_version, and every (platform, release) pair
    must predict reference values."""
    from stockade.appraisal.policy import PolicyInvalid

    try:
        document = read_policy(file)
        policy, references = check_policy(document)
    except PolicyInvalid as error:
        raise PolicyCheckFailed(f"{error.field}: {error.detail}") from None
    releases = [f"{m.name} {m.version}" for m in policy.releases]
    if output is OutputFormat.JSON:
        emit_json(
            {
                "valid": True,
                "id": policy.id,
                "pcrs": str(policy.pcrs),
                "releases": releases,
                "skipped": list(getattr(references, "skipped", ())),
            }
        )
        return
    typer.echo(
        f"{file}: policy {policy.id} is valid ({len(releases)} releases"
        + (f": {', '.join(releases)}" if releases else "")
        + f"; PCRs {policy.pcrs})"
    )
    for skipped in getattr(references, "skipped", ()):
        typer.echo(f"  skipped: {skipped}")


@app.command("schema")
def schema() -> None:
    """Print the policy document's JSON Schema (for editors; docs/policy.schema.json)."""
    from stockade.appraisal.policy_schema import policy_schema

    emit_json(policy_schema())


def _relative(target: Path, out: Path) -> str:
    """``target`` as a path relative to the directory of ``out`` (how a policy names files):
    as the operator named it (a symbolic link stays a link, so a release directory that
    points at the current build keeps doing so), unless ``..`` through a link would lead
    elsewhere, then by its resolved path."""
    import os

    named = os.path.relpath(os.path.abspath(target), os.path.abspath(out.parent))
    if (out.parent / named).resolve() == target.resolve():
        return named
    return os.path.relpath(target.resolve(), out.resolve().parent)


def _write_policy(out: Path, document: dict[str, Any], *, force: bool, replace: bool) -> None:
    import yaml

    from stockade.home import create_exclusive, write_atomic

    text = yaml.safe_dump(document, sort_keys=False, width=100)
    try:
        if force or replace:
            write_atomic(out, text)
        elif not create_exclusive(out, text.encode()):
            raise InputError(f"'{out}' exists; pass --force to replace it")
    except OSError as error:
        raise InputError(f"cannot write policy '{out}': {error.strerror or error}") from None


def _envelope_document(path: Path, what: str) -> dict[str, Any]:
    from stockade.strict_json import loads_strict

    try:
        document = loads_strict(read_file(path, what), f"{what} '{path}'", max_size=_MAX_FILE)
    except (ValueError, StockadeError) as error:
        raise InputError(f"{what} '{path}' is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InputError(f"{what} '{path}' is not a DSSE envelope (a JSON object)")
    return document


def _open_release(path: Path, signers: Any, min_security_version: int) -> Any:
    """The manifest of the DSSE envelope at ``path``, verified under ``signers`` and at or
    above ``min_security_version``; ``VerificationFailed`` otherwise."""
    from stockade.errors import VerificationFailed
    from stockade.release.dsse import Envelope
    from stockade.release.manifest import open_signed_manifest

    raw = read_file(path, "release envelope")
    try:
        envelope = Envelope.from_bytes(raw)
    except StockadeError as error:
        raise InputError(f"release envelope '{path}': {error}") from None
    try:
        manifest, _ = open_signed_manifest(
            envelope, signers, min_security_version=min_security_version
        )
    except StockadeError as error:
        raise VerificationFailed(f"release '{path}' refused: {error}") from None
    return manifest


@app.command("new")
def new(
    policy_id: Annotated[str, typer.Option("--id", help="the policy's id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the policy (YAML)")],
    signer: Annotated[
        Path | None, typer.Option("--signer", help="org public key (PEM) releases are signed by")
    ] = None,
    platforms: Annotated[
        list[Path] | None, typer.Option("--platform", help="platform.json (repeatable)")
    ] = None,
    releases: Annotated[
        list[Path] | None,
        typer.Option("--release", help="signed release manifest.dsse.json (repeatable)"),
    ] = None,
    captured: Annotated[
        Path | None, typer.Option("--from", help="a captured policy (policy capture/merge)")
    ] = None,
    min_security_version: Annotated[
        int | None,
        typer.Option(
            "--min-security-version",
            min=0,
            help="oldest security version accepted [default: the lowest of the releases]",
        ),
    ] = None,
    pcrs: Annotated[
        str | None,
        typer.Option("--pcrs", help="quoted PCRs [default: sha256:0-9,12, or the capture's]"),
    ] = None,
    validity: Annotated[
        int, typer.Option("--result-validity-seconds", min=1, help="how long a result holds")
    ] = 120,
    embed: Annotated[
        bool,
        typer.Option("--embed", help="copy the files' contents in (default: name them by path)"),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Write a new policy document from an org key, platform references and signed releases
    (or a captured platform), checked as `policy validate` checks it.

    Files are named by path relative to --out (what `policy apply`, `policy validate` and
    `verifier serve --policy` read in), or with --embed copied in."""
    from stockade.release.keys import load_verifying_key

    platforms = platforms or []
    releases = releases or []
    if captured is not None and platforms:
        raise InputError("--from (a captured platform) and --platform exclude each other")
    if captured is None and not platforms:
        raise InputError("give --platform (platform.json) at least once, or --from CAPTURED")
    if releases and signer is None:
        raise InputError("--release needs --signer (the key its manifest is signed by)")
    if captured is None and not releases and signer is None:
        raise InputError(
            "give --release (manifest.dsse.json) at least once, or --signer with "
            "--min-security-version (any release that key signs, sent by the agent)"
        )
    if captured is not None and not releases:
        raise InputError("a captured platform lists its releases: give --release")
    if not releases and min_security_version is None:
        raise InputError("a policy by --signer alone needs --min-security-version")
    document: dict[str, Any] = {"id": policy_id}
    if captured is None:
        document["pcrs"] = pcrs or "sha256:0,1,2,3,4,5,6,7,8,9,12"
    elif pcrs is not None:
        document["pcrs"] = pcrs
    document["result_validity_seconds"] = validity
    if signer is not None:
        pem = read_file(signer, "signer public key")
        key = load_verifying_key(pem, f"signer '{signer}'")
        manifests = [_open_release(path, (key,), 0) for path in releases]
        if min_security_version is None:
            min_security_version = min(m.security_version for m in manifests)
        document["releases"] = {
            "signer": pem.decode() if embed else _relative(signer, out),
            "min_security_version": min_security_version,
        }
        if releases:
            document["releases"]["manifests"] = [
                _envelope_document(path, "release envelope") if embed else _relative(path, out)
                for path in releases
            ]
    if captured is not None:
        document["captured"] = (
            read_document(captured, "captured policy") if embed else _relative(captured, out)
        )
    else:
        document["platforms"] = [
            read_document(path, "platform reference") if embed else _relative(path, out)
            for path in platforms
        ]
        document["secure_boot"] = {"required": True}
    base = out.resolve().parent
    check_policy(resolve_paths(document, base))
    _write_policy(out, document, force=force, replace=False)
    typer.echo(f"policy {policy_id} written to {out}")


@app.command("add-release")
def add_release(
    file: Annotated[Path, typer.Argument(help="policy document (YAML or JSON), rewritten")],
    release: Annotated[Path, typer.Argument(help="signed release manifest.dsse.json")],
    embed: Annotated[
        bool, typer.Option("--embed", help="copy the envelope in (default: name it by path)")
    ] = False,
) -> None:
    """Add a signed release to a policy file: refused (exit 1) unless its manifest verifies
    under the policy's signer keys at or above its min_security_version."""
    from stockade.appraisal.policy import PolicyInvalid, parse_policy
    from stockade.release.manifest import manifest_digest

    raw = read_document(file, "policy", named_by="id")
    try:
        policy = parse_policy(resolve_paths(raw, file.parent), 1)
    except PolicyInvalid as error:
        raise PolicyCheckFailed(f"{error.field}: {error.detail}") from None
    if not policy.signers or not isinstance(raw.get("releases"), dict):
        raise InputError(f"policy '{file}' has no releases section (no signer to verify under)")
    manifest = _open_release(release, policy.signers, policy.min_security_version)
    if manifest_digest(manifest) in {manifest_digest(m) for m in policy.releases}:
        typer.echo(f"release {manifest.name} {manifest.version} is already in {file}")
        return
    entry: Any = (
        _envelope_document(release, "release envelope") if embed else _relative(release, file)
    )
    releases = dict(raw["releases"])
    releases["manifests"] = [*releases.get("manifests", []), entry]
    updated = {**raw, "releases": releases}
    check_policy(resolve_paths(updated, file.parent))
    _write_policy(file, updated, force=True, replace=True)
    typer.echo(
        f"release {manifest.name} {manifest.version} (security version "
        f"{manifest.security_version}) added to {file}"
    )


def _write_captured(out: Path, document: dict[str, Any], *, force: bool) -> None:
    """Write a captured policy as YAML; never replace ``out`` without ``force``."""
    import yaml

    from stockade.home import create_exclusive, write_atomic

    text = yaml.dump(document, Dumper=yaml.CSafeDumper, sort_keys=False, width=100)
    try:
        if force:
            write_atomic(out, text)
        elif not create_exclusive(out, text.encode()):
            raise InputError(f"'{out}' exists; pass --force to replace it")
    except OSError as error:
        raise InputError(f"cannot write policy '{out}': {error.strerror or error}") from None


@app.command("capture")
def capture(
    event_log: Annotated[Path, typer.Option("--event-log", help="known-good TCG event log")],
    policy_id: Annotated[str, typer.Option("--id", help="the policy's id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the policy (YAML)")],
    machine: Annotated[
        str | None,
        typer.Option("--machine", help="the machine the log is from (default: the --id)"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Capture a golden-machine policy from a known-good event log (written as YAML).

    For each PCR the log measures (0-9, 11-14), its trusted events in order with their
    digests, what each measured, and the PCR's value; the dbx's revocations and shim's
    SbatLevel, so a later, stricter one is accepted. `stockade appraise` checks logs
    against it; `stockade policy merge` merges the captures of several machines.
    """
    from stockade.appraisal.captured import capture_policy, self_replayed
    from stockade.evidence.eventlog import parse_event_log
    from stockade.evidence.replay import verify_log

    if machine is not None and not machine:
        raise InputError("--machine is empty")
    log = parse_event_log(read_file(event_log, "event log"))
    captured = capture_policy(verify_log(log, self_replayed(log)), policy_id, machine=machine)
    _write_captured(out, captured.to_document(), force=force)
    events = sum(len(pcr.variants[0].events) for pcr in captured.pcrs.values())
    print(
        f"policy {policy_id}: {events} events in PCRs "
        f"{', '.join(map(str, sorted(captured.pcrs)))} written to {out}"
    )


class PerMachineOption(StrEnum):
    PER_NODE = "per-node"
    EXCLUDE = "exclude"


@app.command("merge")
def merge(
    captured: Annotated[
        list[Path], typer.Argument(help="captured (or merged) policies (YAML), one bank")
    ],
    policy_id: Annotated[str, typer.Option("--id", help="the merged policy's id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the policy (YAML)")],
    per_machine: Annotated[
        PerMachineOption,
        typer.Option(
            "--per-machine",
            help="events that legitimately differ per machine (configuration PCRs 1, 3, 5, "
            "6): a digest per machine (per-node) or not compared (exclude)",
        ),
    ] = PerMachineOption.PER_NODE,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Merge the captured policies of several machines into one fleet policy.

    Per PCR, machines with the same events share a variant; in the configuration PCRs
    (1, 3, 5, 6) events that differ where the event types are the same become per machine;
    anything else that differs (firmware, boot chain, Secure Boot: the code PCRs) becomes
    another accepted variant. A machine captured again (after a firmware update) and merged
    with the current policy keeps both captures; merge only the new captures to drop the
    old ones. Prints which PCRs got variants, which events became per machine and why, and
    which machines have several captures. Exit 2 for policies of different banks or that
    cannot be read.
    """
    from stockade.appraisal.captured_fleet import PerMachine, merge_captured
    from stockade.cli.appraise import load_captured_policy

    if not policy_id:
        raise InputError("--id is empty")
    policies = [(str(path), load_captured_policy(path)) for path in captured]
    result = merge_captured(policies, policy_id, per_machine=PerMachine(per_machine.value))
    _write_captured(out, result.policy.to_document(), force=force)
    machines = result.policy.machine_names
    print(
        f"policy {policy_id}: {len(machines)} machines ({', '.join(machines)}), PCRs "
        f"{', '.join(map(str, sorted(result.policy.pcrs)))} written to {out}"
    )
    for line in result.summary:
        print(f"  {line}")


@app.command("activate")
def activate(
    policy_id: Annotated[str, typer.Argument(help="a stored policy id")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Make a stored policy the one every replica appraises under. Needs the operator token."""
    with client(verifier, ca, token_file) as api:
        active = api.activate_policy(policy_id)
    if output is OutputFormat.JSON:
        emit_json(active)
        return
    typer.echo(f"active policy: {inline(active.get('id'))}@{inline(active.get('version'))}")


@app.command("delete")
def delete(
    policy_id: Annotated[str, typer.Argument(help="policy id (every version)")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Delete every version of a policy that is not the active one. Needs the operator token."""
    with client(verifier, ca, token_file) as api:
        api.delete_policy(policy_id)
    typer.echo(f"policy {policy_id} deleted")


@app.command("show")
def show(
    policy_id: Annotated[str, typer.Argument(help="policy id")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """The latest version of a policy. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        stored = api.policy(policy_id)
    if output is OutputFormat.JSON:
        emit_json(stored)
        return
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(policy_text(stored), "yaml", word_wrap=True))


def policy_text(stored: dict[str, Any]) -> str:
    """A stored policy as YAML (what ``policy apply`` reads)."""
    import yaml

    return yaml.safe_dump(stored, sort_keys=False, width=100)


@app.command("list")
def list_policies(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every policy with its latest version. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        policies = api.policies()
    if output is OutputFormat.JSON:
        emit_json({"policies": policies})
        return
    from rich.console import Console

    Console().print(policy_table(policies))


def _pcrs(policy: dict[str, Any]) -> str:
    """The PCRs a policy names: a list, or the keys of a mapping of PCRs to values."""
    document = policy.get("document")
    pcrs = policy.get("pcrs")
    if isinstance(document, dict):
        pcrs = document.get("pcrs", pcrs)
    if isinstance(pcrs, dict):
        pcrs = list(pcrs)
    return inline(pcrs)


def policy_table(policies: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title=f"{len(policies)} policies")
    for column in ("id", "version", "created", "PCRs"):
        table.add_column(column)
    for policy in policies:
        table.add_row(
            cell(policy.get("id")),
            cell(policy.get("version")),
            cell(policy.get("created_at")),
            cell(_pcrs(policy), "-"),
        )
    return table


_STORED = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)(?:@([1-9][0-9]*))?")
# Sections compared field by field (releases, platforms and PCR references are compared by
# what they mean, not as text).
_RULE_SECTIONS = ("result_validity_seconds", "secure_boot", "enforce", "executions", "ukis")


def _load_side(
    spec: str, verifier: str | None, ca: Path | None, token_file: Path | None
) -> tuple[str, dict[str, Any]]:
    """A policy document from a file, or ``ID[@VERSION]`` stored at the verifier."""
    path = Path(spec)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json"):
        return spec, read_policy(path)
    match = _STORED.fullmatch(spec)
    if match is None:
        raise InputError(f"'{spec}' is neither a policy file nor a stored ID[@VERSION]")
    policy_id, version = match.group(1), match.group(2)
    with client(verifier, ca, token_file) as api:
        stored = api.request("GET", f"/v1/policies/{policy_id}", version=version)
    document = stored.get("document") if isinstance(stored, dict) else None
    if not isinstance(document, dict):
        raise InputError(f"the verifier answered no document for {spec}")
    return f"{policy_id}@{inline(stored.get('version'))}", document


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """JSON leaves by dotted path (lists as ``[i]``)."""
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key, item in value.items():
            found.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return found or {prefix: {}}
    if isinstance(value, list):
        found = {}
        for index, item in enumerate(value):
            found.update(_flatten(item, f"{prefix}[{index}]"))
        return found or {prefix: []}
    return {prefix: value}


def policy_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new`` (resolved documents): releases added and
    removed, signers, minimum security version, quoted PCRs, platforms, reference values by
    (release, platform) and PCR, and rule fields. Both must be valid policies."""
    import hashlib

    from stockade.evidence.algorithms import Alg
    from stockade.release.keys import keyid
    from stockade.release.manifest import manifest_digest
    from stockade.strict_json import canonical_json

    (old_policy, old_refs), (new_policy, new_refs) = check_policy(old), check_policy(new)

    def releases(policy: Any) -> dict[str, dict[str, Any]]:
        return {
            manifest_digest(m).hex(): {
                "name": m.name,
                "version": m.version,
                "security_version": m.security_version,
                "manifest_sha256": manifest_digest(m).hex(),
            }
            for m in policy.releases
        }

    def platforms(document: dict[str, Any]) -> dict[str, str]:
        found = {}
        for item in document.get("platforms") or []:
            digest = hashlib.sha256(canonical_json(item)).hexdigest()
            found[digest] = inline(item.get("crtm_version")) if isinstance(item, dict) else ""
        return found

    def references(refs: Any) -> dict[str, dict[str, str]]:
        entries = getattr(refs, "entries", ())
        return {
            f"{entry.release} on platform {entry.platform_index}": {
                str(index): value.hex()
                for index, value in sorted(entry.values.banks.get(Alg.SHA256, {}).items())
            }
            for entry in entries
        }

    before, after = releases(old_policy), releases(new_policy)
    old_platforms, new_platforms = platforms(old), platforms(new)
    old_refs_by, new_refs_by = references(old_refs), references(new_refs)
    pcr_changes = []
    for label in sorted(set(old_refs_by) & set(new_refs_by)):
        for index in sorted(set(old_refs_by[label]) | set(new_refs_by[label]), key=int):
            a, b = old_refs_by[label].get(index), new_refs_by[label].get(index)
            if a != b:
                pcr_changes.append({"reference": label, "pcr": int(index), "from": a, "to": b})
    old_rules = {k: v for s in _RULE_SECTIONS if s in old for k, v in _flatten(old[s], s).items()}
    new_rules = {k: v for s in _RULE_SECTIONS if s in new for k, v in _flatten(new[s], s).items()}
    rules = [
        {"field": key, "from": old_rules.get(key), "to": new_rules.get(key)}
        for key in sorted(set(old_rules) | set(new_rules))
        if old_rules.get(key) != new_rules.get(key)
    ]
    old_signers = sorted(keyid(k) for k in old_policy.signers)
    new_signers = sorted(keyid(k) for k in new_policy.signers)
    captured_changed = canonical_json(old.get("captured")) != canonical_json(new.get("captured"))
    return {
        "releases_added": [after[d] for d in after if d not in before],
        "releases_removed": [before[d] for d in before if d not in after],
        "signers_added": [k for k in new_signers if k not in old_signers],
        "signers_removed": [k for k in old_signers if k not in new_signers],
        "min_security_version": (
            {"from": old_policy.min_security_version, "to": new_policy.min_security_version}
            if old_policy.min_security_version != new_policy.min_security_version
            else None
        ),
        "pcrs": (
            {"from": str(old_policy.pcrs), "to": str(new_policy.pcrs)}
            if str(old_policy.pcrs) != str(new_policy.pcrs)
            else None
        ),
        "platforms_added": [
            {"sha256": d, "crtm_version": v} for d, v in new_platforms.items()
            if d not in old_platforms
        ],
        "platforms_removed": [
            {"sha256": d, "crtm_version": v} for d, v in old_platforms.items()
            if d not in new_platforms
        ],
        "captured_changed": captured_changed,
        "references_added": sorted(set(new_refs_by) - set(old_refs_by)),
        "references_removed": sorted(set(old_refs_by) - set(new_refs_by)),
        "pcr_references_changed": pcr_changes,
        "rules_changed": rules,
    }  # fmt: skip


def _change_lines(changes: dict[str, Any]) -> list[str]:
    lines = []

    def release(item: dict[str, Any]) -> str:
        return (
            f"release {item['name']} {item['version']} (security version "
            f"{item['security_version']}, manifest sha256:{item['manifest_sha256'][:16]}...)"
        )

    lines += [f"+ {release(item)}" for item in changes["releases_added"]]
    lines += [f"- {release(item)}" for item in changes["releases_removed"]]
    lines += [f"+ signer {key}" for key in changes["signers_added"]]
    lines += [f"- signer {key}" for key in changes["signers_removed"]]
    for name in ("min_security_version", "pcrs"):
        if changes[name] is not None:
            lines.append(f"~ {name}: {inline(changes[name]['from'])} -> {changes[name]['to']}")
    lines += [
        f"+ platform {p['crtm_version']} (sha256:{p['sha256'][:16]}...)"
        for p in changes["platforms_added"]
    ]
    lines += [
        f"- platform {p['crtm_version']} (sha256:{p['sha256'][:16]}...)"
        for p in changes["platforms_removed"]
    ]
    if changes["captured_changed"]:
        lines.append("~ captured platform changed")
    lines += [f"+ reference {label}" for label in changes["references_added"]]
    lines += [f"- reference {label}" for label in changes["references_removed"]]
    lines += [
        f"~ PCR {c['pcr']} of {c['reference']}: {c['from'] or '(none)'} -> {c['to'] or '(none)'}"
        for c in changes["pcr_references_changed"]
    ]
    lines += [
        f"~ {r['field']}: {'(unset)' if r['from'] is None else inline(r['from'])} -> "
        f"{'(unset)' if r['to'] is None else inline(r['to'])}"
        for r in changes["rules_changed"]
    ]
    return lines


@app.command("diff")
def diff(
    old: Annotated[str, typer.Argument(help="policy file, or a stored ID[@VERSION]")],
    new: Annotated[str, typer.Argument(help="policy file, or a stored ID[@VERSION]")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """What changed between two policies: releases added and removed, signers, minimum
    security version, quoted PCRs, platforms, reference PCR values, and rules (enforce,
    secure_boot, executions, validity). A stored ID[@VERSION] is read from the verifier
    (a reader token); both must be valid policies (else exit 1, as `policy validate`)."""
    old_name, old_document = _load_side(old, verifier, ca, token_file)
    new_name, new_document = _load_side(new, verifier, ca, token_file)
    changes = policy_changes(old_document, new_document)
    if output is OutputFormat.JSON:
        emit_json({"from": old_name, "to": new_name, **changes})
        return
    lines = _change_lines(changes)
    typer.echo(f"{old_name} -> {new_name}: " + (f"{len(lines)} changes" if lines else "no change"))
    for line in lines:
        typer.echo(f"  {line}")
