"""Serve the verifier over TLS with uvicorn."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from stockade.verifier.config import VerifierConfig
from stockade.verifier.datadir import prepare_data_dir
from stockade.verifier.shared_keys import check_keys_dir, serving_tls, signing_key
from stockade.verifier.tls import TlsFiles


@dataclass(frozen=True)
class Prepared:
    url: str
    tls: TlsFiles
    signing_key_path: Path
    kid: str


def prepare(config: VerifierConfig, host: str, port: int) -> Prepared:
    """Make (first start) or load the TLS and signing keys; nothing is served yet. A data
    directory others may enter is refused (``ConfigurationError``: chmod 700 it), and so is
    a ``--keys-dir`` that lacks a shared key (``stockade.verifier.shared_keys``)."""
    prepare_data_dir(config.data_dir)
    if config.keys_dir is not None:
        check_keys_dir(config.keys_dir)
    tls = serving_tls(config, host)
    key = signing_key(config)
    shown = f"[{host}]" if ":" in host else host
    return Prepared(f"https://{shown}:{port}", tls, key.path, key.kid)


def serve_app(
    app: FastAPI, host: str, port: int, tls: TlsFiles, sock: socket.socket | None = None
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT: on ``host:port``, or on the listening ``sock``
    (a worker of ``serve --workers``)."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(tls.server_cert),
            ssl_keyfile=str(tls.server_key),
            log_config=None,  # stockade.logs.configure_logging routes uvicorn's loggers
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )
    server.run(sockets=None if sock is None else [sock])
