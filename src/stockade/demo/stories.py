"""The demo stories (`stockade demo`): the attestation story on one software TPM, end to end.

Each step calls the same library code a real verifier and agent use; the
demo fails (exit 1) if any step does not behave as a verifier must.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from stockade.errors import VerificationFailed
from stockade.evidence import (
    ClockRollback,
    PcrSelection,
    PcrValues,
    QuoteInvalid,
    Signature,
    make_credential,
    validate_ek_certificate,
    verify_quote,
)
from stockade.evidence.templates import KeyKind

DEMO_PCRS = "sha256:0,1,2,3,4,5,6,7"


class DemoFailed(VerificationFailed):
    """A step of the demo did not behave as it must."""


def _expect_rejection(console: Console, what: str, attempt: Callable[[], object]) -> None:
    try:
        attempt()
    except QuoteInvalid as rejected:
        console.print(f"  [green]rejected[/] {what}: [dim]{rejected}[/]")
        return
    raise DemoFailed(f"{what} was accepted")


def run_demo() -> None:
    """Start a software TPM, enroll it, quote, verify, and show attacks rejected."""
    from stockade.tpm.ak import create_ak
    from stockade.tpm.credential import activate_credential
    from stockade.tpm.device import Tpm
    from stockade.tpm.ek import read_endorsement
    from stockade.tpm.quote import quote
    from stockade.tpm.swtpm import start_swtpm

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=120)
    home = Path(tempfile.mkdtemp(prefix="stockade-demo-"))
    try:
        console.rule("[bold]Stockade demo: one node, one TPM")
        with start_swtpm("demo-node", home=home) as swtpm, Tpm(swtpm.tcti) as tpm:
            console.print(f"1. software TPM up at [cyan]{swtpm.tcti}[/] with EK certificates")

            endorsement = read_endorsement(tpm, KeyKind.RSA)
            if endorsement.certificate is None:
                raise DemoFailed("the software TPM has no RSA EK certificate")
            validated = validate_ek_certificate(
                endorsement.certificate,
                endorsement.public,
                trusted_roots=swtpm.ek_ca.trusted_roots(),
                intermediates=swtpm.ek_ca.intermediates(),
                now=datetime.now(UTC),
            )
            chain = " -> ".join(c.subject.rfc4514_string() for c in validated.chain)
            console.print(f"2. EK certificate chains to the trusted TPM vendor CA: [dim]{chain}[/]")

            ak = create_ak(tpm, KeyKind.RSA)
            console.print(f"3. AK created under the EK, name [cyan]{ak.name.hex()}[/]")

            challenge = os.urandom(32)
            blob = make_credential(endorsement.public, ak.name, challenge)
            if activate_credential(tpm, ak, blob) != challenge:
                raise DemoFailed("credential activation returned the wrong secret")
            console.print("4. verifier's MakeCredential challenge recovered: AK is in this TPM")

            impostor = create_ak(tpm, KeyKind.ECC, ek_kind=KeyKind.RSA)
            try:
                activate_credential(tpm, impostor, blob)
            except Exception as refused:
                console.print(
                    f"  [green]refused[/] activation for a different AK: [dim]{refused}[/]"
                )
            else:
                raise DemoFailed("the TPM released a credential bound to another AK")

            selection = PcrSelection.parse(DEMO_PCRS)
            nonce = os.urandom(20)
            evidence = quote(tpm, ak, selection, nonce)
            signature = Signature.unmarshal(evidence.signature)
            verified = verify_quote(
                ak.public,
                evidence.message,
                signature,
                nonce=nonce,
                pcr_values=evidence.pcr_values,
                expected_selection=selection,
            )
            console.print(
                f"5. quote of {verified.selection} verified in pure Python "
                f"(resetCount {verified.clock_info.reset_count}, "
                f"clock {verified.clock_info.clock} ms)"
            )

            console.print("6. attacks:")
            sha256 = selection.banks[0].hash_alg
            forged = dict(evidence.pcr_values.banks[sha256])
            forged[4] = hashlib.sha256(b"a different bootloader").digest()
            _expect_rejection(
                console,
                "PCR 4 rewritten to hide a different bootloader",
                lambda: verify_quote(
                    ak.public,
                    evidence.message,
                    signature,
                    nonce=nonce,
                    pcr_values=PcrValues({sha256: forged}),
                ),
            )
            tampered = bytearray(evidence.message)
            tampered[-1] ^= 0x01
            _expect_rejection(
                console,
                "quote body altered in transit",
                lambda: verify_quote(
                    ak.public,
                    bytes(tampered),
                    signature,
                    nonce=nonce,
                    pcr_values=evidence.pcr_values,
                ),
            )
            fresh_nonce = os.urandom(20)
            _expect_rejection(
                console,
                "old quote replayed against a fresh nonce",
                lambda: verify_quote(
                    ak.public,
                    evidence.message,
                    signature,
                    nonce=fresh_nonce,
                    pcr_values=evidence.pcr_values,
                ),
            )
            later = quote(tpm, ak, selection, fresh_nonce)
            try:
                verify_quote(
                    ak.public,
                    evidence.message,
                    signature,
                    nonce=nonce,
                    pcr_values=evidence.pcr_values,
                    previous_clock=verify_quote(
                        ak.public,
                        later.message,
                        Signature.unmarshal(later.signature),
                        nonce=fresh_nonce,
                        pcr_values=later.pcr_values,
                    ).clock_info,
                )
            except ClockRollback as rollback:
                console.print(
                    f"  [green]rejected[/] an older quote after a newer one: [dim]{rollback}[/]"
                )
            else:
                raise DemoFailed("a quote older than the last accepted one was accepted")

            if tpm.transient_object_count() != 0:
                raise DemoFailed("transient objects were left loaded in the TPM")
        console.print("7. software TPM stopped, nothing left loaded")
        from stockade.demo.boot import measured_boot_story

        measured_boot_story(console, home)
        from stockade.demo.cluster import cluster_story

        cluster_story(console, home)
        from stockade.demo.membership import membership_story

        membership_story(console, home)
        from stockade.demo.containers import containers_story

        containers_story(console, home)
        console.rule("[bold green]demo passed")
    finally:
        shutil.rmtree(home, ignore_errors=True)
