"""Serve the verifier over TLS with uvicorn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from stockade.verifier.config import VerifierConfig
from stockade.verifier.datadir import prepare_data_dir
from stockade.verifier.tls import TlsFiles, load_or_create_signing_key, load_or_create_tls


@dataclass(frozen=True)
class Prepared:
    url: str
    tls: TlsFiles
    signing_key_path: Path
    kid: str


def prepare(config: VerifierConfig, host: str, port: int) -> Prepared:
    """Make (first start) or load the TLS and signing keys; nothing is served yet. A data
    directory others may enter is refused (``ConfigurationError``: chmod 700 it)."""
    prepare_data_dir(config.data_dir)
    tls = load_or_create_tls(config.data_dir, host)
    key = load_or_create_signing_key(config.data_dir)
    shown = f"[{host}]" if ":" in host else host
    return Prepared(f"https://{shown}:{port}", tls, key.path, key.kid)


def serve_app(app: FastAPI, host: str, port: int, tls: TlsFiles) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(tls.server_cert),
            ssl_keyfile=str(tls.server_key),
            log_level="warning",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )
    server.run()
