"""``stockade verifier serve``: the verifier service over TLS on this machine."""

from __future__ import annotations

import logging
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.cli.daemon_options import (
    ConfigOption,
    LogFormatOption,
    LogLevelOption,
    daemon_context,
)
from stockade.cli.verifier_init import init
from stockade.cluster.secret_store import KeyEncryptionKey, load_key_ring
from stockade.errors import InputError
from stockade.home import stockade_home
from stockade.logs import LogFormat, LogLevel, configure_logging
from stockade.verifier.config import (
    DEFAULT_HOST,
    DEFAULT_LOG_ORIGIN,
    DEFAULT_PORT,
    EnrollmentMode,
    VerifierConfig,
    ca_directory_files,
    load_allowlist,
    load_ca_files,
    parse_webhook_secret_options,
)


class EkType(StrEnum):
    RSA = "rsa"
    ECC = "ecc"


app = typer.Typer(no_args_is_help=True, help="The verifier service.")


def _development_ek_ca() -> list[Path]:
    """The local swtpm EK CA (``$STOCKADE_HOME/ek-ca``), when it exists."""
    from stockade.tpm.ekca import EkCa, default_directory

    ca = EkCa(default_directory())
    return [path for path in (ca.root_cert_path, ca.issuer_cert_path) if path.exists()]


def _read_policy(path: Path) -> dict[str, Any]:
    from stockade.cli.policy import read_policy

    return read_policy(path)


SERVE_ENVIRONMENT = "STOCKADE_VERIFIER_SERVE"


@app.command("serve", context_settings=daemon_context(SERVE_ENVIRONMENT))
def serve(
    config_file: ConfigOption = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="keys, certificates and SQLite database")
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port")] = DEFAULT_PORT,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="worker processes serving one socket, each a replica on the shared database "
            "(Python runs one core per process)",
        ),
    ] = 1,
    database: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://...")
    ] = None,
    ek_ca: Annotated[
        list[Path] | None,
        typer.Option(help="trusted TPM vendor CA certificates (PEM/DER; roots+intermediates)"),
    ] = None,
    ek_ca_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--ek-ca-dir",
            help="a bundle of TPM vendor and cloud vTPM EK CA certificates: every .pem, .crt, "
            ".cer and .der file under the directory (repeatable; docs/real-hardware.md)",
        ),
    ] = None,
    ak_ca: Annotated[
        list[Path] | None,
        typer.Option(
            "--ak-ca",
            help="trusted cloud vTPM AK CA certificates (PEM/DER; roots+intermediates; "
            "repeatable): nodes may enroll by an AK certificate they chain to (GCE Shielded "
            "VMs). Kept apart from the EK CAs",
        ),
    ] = None,
    ak_ca_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--ak-ca-dir",
            help="a bundle of cloud vTPM AK CA certificates: every .pem, .crt, .cer and .der "
            "file under the directory (repeatable)",
        ),
    ] = None,
    ek_allowlist: Annotated[
        Path | None,
        typer.Option(
            help="file of allowed EKs: sha256 hex of the EK certificate or of the EK's "
            "SubjectPublicKeyInfo, or serial:<hex>, one per line"
        ),
    ] = None,
    enrollment_mode: Annotated[
        EnrollmentMode,
        typer.Option(
            "--enrollment-mode",
            help="who admits a new TPM: approve (it waits as pending for `stockade nodes "
            "approve`), allowlist (--ek-allowlist), open (development only)",
        ),
    ] = EnrollmentMode.APPROVE,
    ek_type: Annotated[
        list[EkType] | None,
        typer.Option(
            "--ek-type",
            help="EK algorithms accepted (repeatable) [default: rsa and ecc]. A TPM has one EK "
            "per algorithm and each is an identity: accept one so a revoked TPM cannot come "
            "back under its other EK",
        ),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="policy document (YAML/JSON) to apply and make active")
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option(help="URL to POST every event to, signed (repeatable)"),
    ] = None,
    webhook_secret: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook-secret",
            metavar="URL=FILE",
            help="sign deliveries to URL (one of --webhook) in the Standard Webhooks format "
            "with the whsec_ secret in FILE (mode 0600; one per line, two while rotating); "
            "repeatable",
        ),
    ] = None,
    kek_file: Annotated[
        Path | None,
        typer.Option(
            "--kek-file",
            help="key-encryption key for secrets at rest [default: $STOCKADE_KEK; none: "
            "secrets are refused]",
        ),
    ] = None,
    previous_kek_file: Annotated[
        list[Path] | None,
        typer.Option("--previous-kek-file", help="older KEKs still readable during a rotation"),
    ] = None,
    credentials_file: Annotated[
        Path | None,
        typer.Option(
            "--credentials-file",
            help="named credentials, one per line: <name> <operator|reader> sha256:<hex of "
            "the token> (events record who acted)",
        ),
    ] = None,
    log_origin: Annotated[
        str,
        typer.Option(
            "--log-origin",
            help="the transparency log's origin (and its key's name; fixed on first start)",
        ),
    ] = DEFAULT_LOG_ORIGIN,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            "--keys-dir",
            help="read-only directory of the keys every replica shares (a mounted Secret, "
            "made by `stockade verifier keys`): read, never written or made. Without it the "
            "keys are made on first start in the data directory",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            help="an operator-issued TLS certificate (PEM) to serve, e.g. for the Service "
            "names, instead of one issued by the verifier's own CA (with --tls-key)",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", help="the private key of --tls-cert (PEM, mode 0600)"),
    ] = None,
    migrate_schema: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            help="migrate the database on start; --no-migrate refuses to start unless "
            "`stockade verifier migrate` brought the schema to this version's head",
        ),
    ] = True,
    leader_lease_seconds: Annotated[
        float,
        typer.Option(
            "--leader-lease-seconds",
            min=0.5,
            help="how long the stale sweeper's lease lasts: another replica takes over this "
            "long after the sweeping replica stops renewing it",
        ),
    ] = 10.0,
    enrollment_rate: Annotated[
        float,
        typer.Option(
            "--enrollment-rate",
            min=1,
            help="enrollment requests a client address may make per minute, after a burst "
            "of 20; raise it when many machines enroll from behind one address (a NAT)",
        ),
    ] = 60.0,
    log_format: LogFormatOption = LogFormat.TEXT,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Serve the verifier over HTTPS. First start makes the TLS CA/certificate and the EAR
    signing key in the data directory (or reads the shared keys from --keys-dir)."""
    from stockade.verifier.policies import activate_policy, apply_policy
    from stockade.verifier.server import prepare, serve_app

    configure_logging(log_format, log_level)
    directory = data_dir or stockade_home() / "verifier"
    ca_files = list(ek_ca or [])
    for bundle in ek_ca_dir or ():
        ca_files += ca_directory_files(bundle)
    development = not ca_files
    if development:
        ca_files = _development_ek_ca()
    roots, intermediates = load_ca_files(ca_files)
    ak_ca_files = list(ak_ca or [])
    for bundle in ak_ca_dir or ():
        ak_ca_files += ca_directory_files(bundle, "--ak-ca-dir")
    ak_roots, ak_intermediates = load_ca_files(ak_ca_files, "AK CA")
    if ak_ca_files and not ak_roots:
        raise InputError(
            f"--ak-ca: {', '.join(map(str, ak_ca_files))} hold no self-signed root: "
            "every AK certificate would be refused"
        )
    document = _read_policy(policy) if policy else None
    config = VerifierConfig(
        data_dir=directory,
        database_url=database,
        ek_roots=roots,
        ek_intermediates=intermediates,
        ak_roots=ak_roots,
        ak_intermediates=ak_intermediates,
        ek_allowlist=load_allowlist(ek_allowlist) if ek_allowlist else None,
        enrollment_mode=enrollment_mode,
        ek_types=frozenset(kind.value for kind in ek_type) if ek_type else None,
        policy_id=document["id"] if document else None,
        webhook_urls=tuple(webhook or ()),
        webhook_secret_files=parse_webhook_secret_options(webhook_secret or (), webhook or ()),
        key_ring=load_key_ring(kek_file, tuple(previous_kek_file or ())),
        log_origin=log_origin,
        credentials_file=credentials_file,
        keys_dir=keys_dir,
        tls_cert=tls_cert,
        tls_key=tls_key,
        migrate_on_start=migrate_schema,
        leader_lease_seconds=leader_lease_seconds,
        enrollment_rate_per_minute=enrollment_rate,
    )
    if enrollment_mode is EnrollmentMode.ALLOWLIST and config.ek_allowlist is None:
        raise InputError("--enrollment-mode allowlist needs --ek-allowlist FILE")
    prepared = prepare(config, host, port)

    from stockade.verifier.app import create_app

    web = create_app(config)
    service = web.state.service
    banner: list[tuple[str, str]] = []
    if document is not None:
        with service.transaction() as session:
            stored = apply_policy(service, session, document["id"], document, service.now())
            # Active on every replica sharing the database, not only on this one.
            activate_policy(session, stored.id, service.now())
        service.invalidate_policy()
        banner.append(("policy", f"{stored.id}@{stored.version} (active)"))
    banner += [
        ("verifier", prepared.url),
        ("TLS CA cert", str(prepared.tls.ca_cert or "none (--tls-cert, operator-issued)")),
        ("TLS server cert", str(prepared.tls.server_cert)),
        ("EAR signing key", f"{prepared.signing_key_path} (kid {prepared.kid})"),
        ("JWKS", f"{prepared.url}/v1/keys"),
        ("database", config.resolved_database_url.split("@")[-1]),
    ]
    if config.key_ring is None:
        banner.append(("secrets", "no KEK configured: secrets are refused (--kek-file)"))
    else:
        banner.append(("secrets", f"KEK {config.key_ring.current.kek_id}"))
    secrets_at = keys_dir or directory
    cluster_ca = service.cluster_ca.directory if keys_dir else directory / "cluster-ca"
    banner += [
        ("cluster CA", str(cluster_ca)),
        ("operator token", str(secrets_at / "operator-token")),
        ("reader token", str(secrets_at / "reader-token")),
    ]
    if keys_dir is not None:
        banner.append(("shared keys", f"{keys_dir} (read only)"))
    if credentials_file is not None:
        banner.append(("credentials", str(credentials_file)))
    banner.append(("enrollment", enrollment_mode.value))
    banner.append(("log key", f"{service.translog.key_string} ({config.keys_directory})"))
    banner += [
        (
            "webhook",
            url + (" (Standard Webhooks signed)" if url in config.webhook_secret_files else ""),
        )
        for url in config.webhook_urls
    ]
    if roots:
        where = "development swtpm EK CA" if development else "configured"
        banner.append(("EK CAs", f"{', '.join(map(str, ca_files))} ({where})"))
    if ak_ca_files:
        banner.append(("AK CAs", f"{', '.join(map(str, ak_ca_files))} (cloud vTPMs)"))
    if workers > 1:
        banner.append(("workers", f"{workers} processes on one socket"))
    _announce(banner, log_format)
    if not roots:
        logging.getLogger("stockade.verifier").warning(
            "no EK CA configured: every enrollment is refused"
        )
    if workers == 1:
        serve_app(web, host, port, prepared.tls)
        return
    from stockade.verifier.workers import serve_workers

    service.engine.dispose()  # no connection of the parent's may cross the fork
    status = serve_workers(
        lambda number: create_app(replace(config, worker=number)),
        workers,
        host,
        port,
        prepared.tls,
        lambda app, sock, tls: serve_app(app, host, port, tls, sock),
    )
    raise typer.Exit(status)


def _announce(banner: list[tuple[str, str]], log_format: LogFormat) -> None:
    """What the verifier serves and with which keys: aligned lines on stdout for a person,
    or one ``verifier started`` record for a collector."""
    if log_format is LogFormat.TEXT:
        for label, value in banner:
            typer.echo(f"{label + ':':<18}{value}")
        return
    details: dict[str, object] = {}
    for label, value in banner:
        key = label.lower().replace(" ", "_")
        previous = details.get(key)
        if previous is None:
            details[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            details[key] = [previous, value]
    logging.getLogger("stockade.verifier").info("verifier started", extra=details)


app.command("init")(init)


@app.command("kek")
def kek(
    path: Annotated[Path, typer.Argument(help="file to create (mode 0600)")],
) -> None:
    """Generate a key-encryption key for secrets at rest (32 random bytes, base64)."""
    import os

    key = KeyEncryptionKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise InputError(f"cannot create {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key.to_text() + "\n")
    typer.echo(f"key-encryption key {key.kek_id} written to {path}")


@app.command("keys")
def keys(
    out: Annotated[Path, typer.Option("--out", help="directory to create the shared key files in")],
    log_origin: Annotated[
        str,
        typer.Option("--log-origin", help="the transparency log's origin (its key's name)"),
    ] = DEFAULT_LOG_ORIGIN,
) -> None:
    """Make the keys every replica shares, once: make a Secret of the directory and give each
    replica `verifier serve --keys-dir` (docs/kubernetes.md). Refuses to replace any key."""
    from stockade.verifier.shared_keys import create_keys

    made = create_keys(out, log_origin)
    for path in made:
        typer.echo(f"wrote {path}")
    typer.echo(
        f"relying parties pin {out / 'verifier-key.pub.pem'}; clients trust {out / 'tls-ca.pem'}"
    )


@app.command("migrate")
def migrate(
    data_dir: Annotated[
        Path | None, typer.Option(help="the data directory (SQLite: its verifier.db)")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://...")
    ] = None,
) -> None:
    """Bring the database's schema to this version's head and exit (a Kubernetes Job or init
    container; replicas then start with `verifier serve --no-migrate`). Replicas migrating
    at once take turns (a PostgreSQL advisory lock)."""
    from stockade.verifier.datadir import prepare_data_dir, prepare_database_file
    from stockade.verifier.db import make_engine, require_head
    from stockade.verifier.db import migrate as run_migrations

    config = VerifierConfig(
        data_dir=data_dir or stockade_home() / "verifier", database_url=database
    )
    url = config.resolved_database_url
    if database is None:
        prepare_data_dir(config.data_dir)
    prepare_database_file(url)
    engine = make_engine(url)
    try:
        run_migrations(engine)
        prepare_database_file(url)
        require_head(engine)
    finally:
        engine.dispose()
    typer.echo(f"database {url.split('@')[-1]}: schema at head")
