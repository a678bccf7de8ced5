"""``stockade demo``: a thin command over ``stockade.demo``."""

from __future__ import annotations


def run() -> None:
    """Start software TPMs, a verifier and agents; show attestation and attacks rejected."""
    from stockade.demo.stories import run_demo

    run_demo()
