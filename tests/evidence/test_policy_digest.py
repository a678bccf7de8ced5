"""Software policy digests against a transcription of TPM 2.0 Part 3, 23.3 (PolicySigned),
23.7 (PolicyPCR) and 23.11 (PolicyCommandCode), then against a real TPM (swtpm): its trial
sessions compute the same digests, its real policy sessions accept signatures over our aHash,
and tpm2-tools (code that is not ours) agrees on both.

The PolicyPCR-only trial digests are also checked in tests/tpm/test_sealed_secrets.py.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from stockade.evidence import EvidenceError, PcrSelection, PcrValues
from stockade.evidence.policy_digest import (
    TPM_CC_DUPLICATE,
    TPM_CC_UNSEAL,
    UNSEAL_POLICY_REF,
    policy_command_code,
    policy_pcr,
    policy_signed,
    policy_signed_digest,
    unseal_policy,
)

SHA1, SHA256, SHA384 = 0x0004, 0x000B, 0x000C
# A SHA-256 Name (nameAlg || digest) standing for the node's channel key.
NAME = struct.pack(">H", SHA256) + hashlib.sha256(b"a channel key's TPMT_PUBLIC").digest()
OTHER_NAME = struct.pack(">H", SHA256) + hashlib.sha256(b"another key's TPMT_PUBLIC").digest()


def reference_policy_pcr(
    previous: bytes, banks: list[tuple[int, list[int]]], values: dict[tuple[int, int], bytes]
) -> bytes:
    """policyDigest' = SHA256(policyDigest || 0x0000017F || TPML_PCR_SELECTION
    || SHA256(PCR values in selection order)), the TPML built byte by byte."""
    tpml = struct.pack(">I", len(banks))
    for alg, indices in banks:
        bitmap = bytearray(3)
        for index in indices:
            bitmap[index // 8] |= 1 << (index % 8)
        tpml += struct.pack(">HB", alg, 3) + bytes(bitmap)
    concatenated = b"".join(values[alg, i] for alg, indices in banks for i in sorted(indices))
    pcr_digest = hashlib.sha256(concatenated).digest()
    return hashlib.sha256(previous + bytes.fromhex("0000017f") + tpml + pcr_digest).digest()


def reference_policy_command_code(previous: bytes, code: int) -> bytes:
    return hashlib.sha256(previous + bytes.fromhex("0000016c") + struct.pack(">I", code)).digest()


def reference_policy_signed(previous: bytes, name: bytes, policy_ref: bytes) -> bytes:
    """Part 3, 23.2.3 PolicyUpdate(TPM_CC_PolicySigned = 0x00000160, authName, policyRef):
    H(H(old || 0x00000160 || authName) || policyRef), the outer hash even for an empty ref."""
    inner = hashlib.sha256(previous + bytes.fromhex("00000160") + name).digest()
    return hashlib.sha256(inner + policy_ref).digest()


def reference_a_hash(nonce: bytes, expiration: int, cp_hash: bytes, policy_ref: bytes) -> bytes:
    """Part 3, 23.3.1: aHash = H(nonceTPM || expiration (INT32, big-endian) || cpHashA
    || policyRef)."""
    return hashlib.sha256(nonce + struct.pack(">i", expiration) + cp_hash + policy_ref).digest()


def flat(values: PcrValues) -> dict[tuple[int, int], bytes]:
    return {(alg, i): v for alg, bank in values.banks.items() for i, v in bank.items()}


@pytest.mark.parametrize(
    ("text", "banks"),
    [
        ("sha256:0", [(SHA256, [0])]),
        ("sha256:0,1,2,3,7,12", [(SHA256, [0, 1, 2, 3, 7, 12])]),
        ("sha256:23,4,16", [(SHA256, [4, 16, 23])]),
        ("sha1:0,7+sha256:4,23", [(SHA1, [0, 7]), (SHA256, [4, 23])]),
        ("sha256:4,23+sha1:0,7", [(SHA256, [4, 23]), (SHA1, [0, 7])]),
    ],
)
def test_policy_pcr_matches_the_specification(text, banks, pcr_values):
    selection = PcrSelection.parse(text)
    assert policy_pcr(selection, pcr_values) == reference_policy_pcr(
        bytes(32), banks, flat(pcr_values)
    )
    chained = hashlib.sha256(b"an earlier assertion").digest()
    assert policy_pcr(selection, pcr_values, chained) == reference_policy_pcr(
        chained, banks, flat(pcr_values)
    )


def test_known_answer_for_pcr0_all_zero():
    """Worked by hand: PCR 0 = 32 zero bytes, selection sha256:0, empty starting digest."""
    selection = PcrSelection.parse("sha256:0")
    zero = PcrValues({SHA256: {0: bytes(32)}})
    tpml = bytes.fromhex("00000001000b03010000")
    expected = hashlib.sha256(
        bytes(32) + bytes.fromhex("0000017f") + tpml + hashlib.sha256(bytes(32)).digest()
    ).digest()
    assert policy_pcr(selection, zero) == expected


def test_policy_command_code_matches_the_specification():
    for code in (TPM_CC_UNSEAL, TPM_CC_DUPLICATE, 0x20000001):
        for previous in (bytes(32), hashlib.sha256(b"x").digest()):
            assert policy_command_code(code, previous) == reference_policy_command_code(
                previous, code
            )


@pytest.mark.parametrize(
    "name",
    [
        NAME,
        struct.pack(">H", SHA1) + hashlib.sha1(b"k").digest(),
        struct.pack(">H", SHA384) + hashlib.sha384(b"k").digest(),
    ],
    ids=["sha256-name", "sha1-name", "sha384-name"],
)
@pytest.mark.parametrize("policy_ref", [b"", UNSEAL_POLICY_REF, bytes(range(64))])
def test_policy_signed_matches_the_specification(name, policy_ref):
    for previous in (bytes(32), hashlib.sha256(b"an earlier assertion").digest()):
        assert policy_signed(name, policy_ref, previous) == reference_policy_signed(
            previous, name, policy_ref
        )
    assert policy_signed(name, policy_ref) == reference_policy_signed(bytes(32), name, policy_ref)


def test_known_answer_for_policy_signed():
    """Worked by hand: Name 000b || 32 x 0x11, policyRef "stockade-unseal", empty digest."""
    name = bytes.fromhex("000b" + "11" * 32)
    first = hashlib.sha256(bytes(32) + bytes.fromhex("00000160000b") + b"\x11" * 32).digest()
    expected = hashlib.sha256(first + b"stockade-unseal").digest()
    assert policy_signed(name, b"stockade-unseal") == expected
    # an empty policyRef still takes the second hash: not the one-hash digest
    assert policy_signed(name, b"") == hashlib.sha256(first).digest() != first


@pytest.mark.parametrize("expiration", [0, 1, 300, -1, -300, 2**31 - 1, -(2**31)])
@pytest.mark.parametrize("cp_hash", [b"", hashlib.sha256(b"TPM2_Unseal cpHash").digest()])
@pytest.mark.parametrize("policy_ref", [b"", UNSEAL_POLICY_REF])
def test_a_hash_matches_the_specification(expiration, cp_hash, policy_ref):
    nonce = hashlib.sha256(b"nonceTPM").digest()
    assert policy_signed_digest(nonce, expiration, cp_hash, policy_ref) == reference_a_hash(
        nonce, expiration, cp_hash, policy_ref
    )


def test_known_answer_for_the_a_hash():
    """Expiration -1 is ff ff ff ff (two's complement), between the nonce and the ref."""
    nonce = bytes(range(16))
    expected = hashlib.sha256(nonce + b"\xff\xff\xff\xff" + b"stockade-unseal").digest()
    assert policy_signed_digest(nonce, -1, b"", b"stockade-unseal") == expected
    assert policy_signed_digest(b"", 0, b"", b"") == hashlib.sha256(bytes(4)).digest()


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ((bytes(65), 0, b"", b""), "nonceTPM"),
        ((bytes(32), 0, bytes(65), b""), "cpHashA"),
        ((bytes(32), 0, b"", bytes(65)), "policyRef"),
        ((bytes(32), 2**31, b"", b""), "INT32"),
        ((bytes(32), -(2**31) - 1, b"", b""), "INT32"),
        ((bytes(32), True, b"", b""), "integer"),
        ((bytes(32), 1.0, b"", b""), "integer"),
        (("nonce", 0, b"", b""), "bytes"),
    ],
)
def test_a_hash_arguments_are_checked(arguments, match):
    with pytest.raises(EvidenceError, match=match):
        policy_signed_digest(*arguments)


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"\x00",
        b"\x00\x0b",  # nameAlg without a digest
        NAME[:-1],
        NAME + b"\x00",
        bytes.fromhex("40000001"),  # a handle-only Name (TPM_RH_OWNER)
        bytes.fromhex("0099") + bytes(32),  # not a hash algorithm
        bytes.fromhex("0004") + bytes(32),  # SHA-1 nameAlg with a SHA-256-sized digest
    ],
)
def test_policy_signed_needs_a_key_name(name):
    with pytest.raises(EvidenceError):
        policy_signed(name, UNSEAL_POLICY_REF)
    with pytest.raises(EvidenceError):
        unseal_policy(PcrSelection.parse("sha256:0"), PcrValues({SHA256: {0: bytes(32)}}), name)


def test_policy_signed_checks_the_previous_digest_and_the_ref():
    with pytest.raises(EvidenceError, match="32 bytes"):
        policy_signed(NAME, b"", bytes(20))
    with pytest.raises(EvidenceError, match="policyRef"):
        policy_signed(NAME, bytes(65))


def test_unseal_policy_is_signed_then_pcr_then_command_code(pcr_values):
    selection = PcrSelection.parse("sha256:0,1,2,3,7,12")
    signed = policy_signed(NAME, UNSEAL_POLICY_REF)
    after_pcr = policy_pcr(selection, pcr_values, signed)
    assert UNSEAL_POLICY_REF == b"stockade-unseal"
    assert unseal_policy(selection, pcr_values, NAME) == policy_command_code(
        TPM_CC_UNSEAL, after_pcr
    )
    # the Duplicate role would need a different digest: the sealed object never leaves
    assert unseal_policy(selection, pcr_values, NAME) != policy_command_code(
        TPM_CC_DUPLICATE, after_pcr
    )
    # order matters: PCR then Signed, or CommandCode then PCR, are other policies
    assert unseal_policy(selection, pcr_values, NAME) != policy_command_code(
        TPM_CC_UNSEAL,
        policy_signed(NAME, UNSEAL_POLICY_REF, policy_pcr(selection, pcr_values)),
    )
    assert unseal_policy(selection, pcr_values, NAME) != policy_pcr(
        selection, pcr_values, policy_command_code(TPM_CC_UNSEAL, signed)
    )


def test_the_unseal_policy_needs_the_authorizing_key(pcr_values):
    """The attack, in digests: a second user of the TPM runs the session without
    PolicySigned (the old unbound policy), with its own key, or with another policyRef. Each
    is another digest, so the TPM refuses TPM2_Unseal (TPM_RC_POLICY_FAIL)."""
    selection = PcrSelection.parse("sha256:0,1,2,3,7,12")
    sealed_to = unseal_policy(selection, pcr_values, NAME)
    unbound = policy_command_code(TPM_CC_UNSEAL, policy_pcr(selection, pcr_values))
    own_key = unseal_policy(selection, pcr_values, OTHER_NAME)
    other_ref = policy_command_code(
        TPM_CC_UNSEAL, policy_pcr(selection, pcr_values, policy_signed(NAME, b""))
    )
    assert len({sealed_to, unbound, own_key, other_ref}) == 4


def test_every_selected_pcr_value_changes_the_digest(pcr_values):
    selection = PcrSelection.parse("sha1:0,7+sha256:0,1,2,3,7,12")
    baseline = unseal_policy(selection, pcr_values, NAME)
    seen = {baseline}
    for alg, index in selection.items():
        banks = {a: dict(bank) for a, bank in pcr_values.banks.items()}
        banks[alg][index] = bytes(len(banks[alg][index]))
        changed = unseal_policy(selection, PcrValues(banks), NAME)
        assert changed not in seen
        seen.add(changed)


def test_pcrs_outside_the_selection_do_not_matter(pcr_values):
    selection = PcrSelection.parse("sha256:0,1,2")
    banks = {a: dict(bank) for a, bank in pcr_values.banks.items()}
    banks[SHA256][16] = bytes(32)
    banks[SHA1][0] = bytes(20)
    assert unseal_policy(selection, PcrValues(banks), NAME) == unseal_policy(
        selection, pcr_values, NAME
    )


def test_the_selection_bitmap_size_is_part_of_the_digest(pcr_values):
    """A TPM hashes the TPML_PCR_SELECTION as sent: sizeofSelect 4 is another policy."""
    selection = PcrSelection.parse("sha256:0")
    wide = PcrSelection((replace(selection.banks[0], size_of_select=4),))
    assert policy_pcr(selection, pcr_values) != policy_pcr(wide, pcr_values)


def test_missing_pcr_values_are_an_evidence_error(pcr_values):
    selection = PcrSelection.parse("sha256:0,1")
    with pytest.raises(EvidenceError, match="sha256:1"):
        policy_pcr(selection, PcrValues({SHA256: {0: bytes(32)}}))


@pytest.mark.parametrize("previous", [b"", bytes(20), bytes(33)])
def test_previous_digest_must_be_one_sha256_digest(previous, pcr_values):
    with pytest.raises(EvidenceError, match="32 bytes"):
        policy_pcr(PcrSelection.parse("sha256:0"), pcr_values, previous)
    with pytest.raises(EvidenceError, match="32 bytes"):
        policy_command_code(TPM_CC_UNSEAL, previous)


@pytest.mark.parametrize("code", [-1, 1 << 32])
def test_command_code_must_fit_32_bits(code):
    with pytest.raises(EvidenceError, match="32-bit"):
        policy_command_code(code, bytes(32))


# -- the real TPM (swtpm): trial sessions, real sessions, tpm2-tools ----------------------------

SELECTION_TEXT = "sha256:0,1,2,3,7,12"
TPM_RC_SIGNATURE = 0x09B  # format-one; compared without the parameter number bits


@pytest.fixture(scope="module")
def tss() -> SimpleNamespace:
    """tpm2-pytss and the TPM-side modules, imported only when a TPM test runs."""
    pytest.importorskip("tpm2_pytss", reason="tpm2-pytss (libtss2) is not installed")
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_SE
    from tpm2_pytss.types import TPM2B_PUBLIC, TPML_PCR_SELECTION, TPMT_SIGNATURE, TPMT_SYM_DEF

    from stockade.tpm.device import Tpm
    from stockade.tpm.node_key import create_node_key, loaded_node_key
    from stockade.tpm.sealed import authorize_policy_signed

    return SimpleNamespace(
        TSS2_Exception=TSS2_Exception,
        ESYS_TR=ESYS_TR,
        TPM2_ALG=TPM2_ALG,
        TPM2_CC=TPM2_CC,
        TPM2_SE=TPM2_SE,
        TPM2B_PUBLIC=TPM2B_PUBLIC,
        TPML_PCR_SELECTION=TPML_PCR_SELECTION,
        TPMT_SIGNATURE=TPMT_SIGNATURE,
        TPMT_SYM_DEF=TPMT_SYM_DEF,
        Tpm=Tpm,
        create_node_key=create_node_key,
        loaded_node_key=loaded_node_key,
        authorize_policy_signed=authorize_policy_signed,
    )


@pytest.fixture(scope="module")
def tpm(shared_software_tpm: Any, tss: SimpleNamespace) -> Iterator[Any]:
    with tss.Tpm(shared_software_tpm.tcti) as opened:
        yield opened


@pytest.fixture(scope="module")
def channel_key(tpm: Any, tss: SimpleNamespace) -> Any:
    """A channel key as the agent makes it: P-256, in the TPM, a TSS2 PRIVATE KEY."""
    return tss.create_node_key(tpm)


def start_session(tss: SimpleNamespace, tpm: Any, *, trial: bool) -> Any:
    return tpm.esys.start_auth_session(
        tss.ESYS_TR.NONE,
        tss.ESYS_TR.NONE,
        tss.TPM2_SE.TRIAL if trial else tss.TPM2_SE.POLICY,
        tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.NULL),
        tss.TPM2_ALG.SHA256,
    )


def ecdsa(tss: SimpleNamespace, r: int, s: int) -> Any:
    signature = tss.TPMT_SIGNATURE(sigAlg=tss.TPM2_ALG.ECDSA)
    signature.signature.ecdsa.hash = tss.TPM2_ALG.SHA256
    signature.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    signature.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    return signature


def software_signature(tss: SimpleNamespace, key: ec.EllipticCurvePrivateKey, a_hash: bytes) -> Any:
    r, s = utils.decode_dss_signature(key.sign(a_hash, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    return ecdsa(tss, r, s)


def assert_nothing_loaded(tpm: Any) -> None:
    assert tpm.transient_object_count() == 0


@pytest.mark.swtpm
@pytest.mark.parametrize("policy_ref", [b"", UNSEAL_POLICY_REF], ids=["no-ref", "unseal-ref"])
def test_a_trial_session_computes_our_unseal_policy(tpm, tss, channel_key, policy_ref):
    """TPM2_PolicySigned (a trial session checks no signature), PolicyPCR, PolicyCommandCode
    on the TPM, authObject the channel key loaded from its TSS2 PRIVATE KEY: every digest
    equals ours, and the TPM's Name of the key equals TpmPublic.name()."""
    selection = PcrSelection.parse(SELECTION_TEXT)
    tpm.extend_pcr(12, b"make PCR 12 non-zero")
    values = tpm.read_pcrs(selection)
    name = channel_key.public.name()
    with tss.loaded_node_key(tpm, channel_key) as key:
        assert bytes(tpm.esys.tr_get_name(key)) == name
        session = start_session(tss, tpm, trial=True)
        with tpm.transient(session):
            tpm.esys.policy_signed(
                key, session, ecdsa(tss, 1, 1), b"", b"", policy_ref, expiration=0
            )
            assert bytes(tpm.esys.policy_get_digest(session)) == policy_signed(name, policy_ref)
            pcrs, _ = tss.TPML_PCR_SELECTION.unmarshal(selection.marshal())
            tpm.esys.policy_pcr(session, b"", pcrs)
            tpm.esys.policy_command_code(session, tss.TPM2_CC(TPM_CC_UNSEAL))
            digest = bytes(tpm.esys.policy_get_digest(session))
    if policy_ref == UNSEAL_POLICY_REF:
        assert digest == unseal_policy(selection, values, name)
    else:
        assert digest != unseal_policy(selection, values, name)
    assert digest == policy_command_code(
        TPM_CC_UNSEAL, policy_pcr(selection, values, policy_signed(name, policy_ref))
    )
    assert_nothing_loaded(tpm)


@pytest.mark.swtpm
@pytest.mark.parametrize("expiration", [0, 300, -300])
@pytest.mark.parametrize("cp_hash", [b"", hashlib.sha256(b"a command").digest()], ids=["", "cp"])
@pytest.mark.parametrize("policy_ref", [b"", UNSEAL_POLICY_REF], ids=["no-ref", "unseal-ref"])
def test_the_tpm_accepts_a_signature_over_our_a_hash_and_only_that(
    tpm, tss, channel_key, expiration, cp_hash, policy_ref
):
    """A real policy session: a software P-256 key (public loaded with TPM2_LoadExternal)
    signs policy_signed_digest(nonceTPM, ...) with `cryptography`; the TPM verifies it, so
    our aHash is the TPM's. A signature over any other aHash (another expiration, another
    session's nonceTPM: a replay) is refused with TPM_RC_SIGNATURE."""
    software = ec.generate_private_key(ec.SECP256R1())
    public = channel_key.public.with_public_key(software.public_key())
    in_public, _ = tss.TPM2B_PUBLIC.unmarshal(public.marshal_tpm2b())
    key = tpm.esys.load_external(in_public)
    with tpm.transient(key):
        assert bytes(tpm.esys.tr_get_name(key)) == public.name()
        earlier = start_session(tss, tpm, trial=False)
        with tpm.transient(earlier):
            stale_nonce = bytes(tpm.esys.trsess_get_nonce_tpm(earlier))
        session = start_session(tss, tpm, trial=False)
        with tpm.transient(session):
            nonce = bytes(tpm.esys.trsess_get_nonce_tpm(session))
            assert len(nonce) == 32 and nonce != stale_nonce

            def attempt(a_hash: bytes) -> None:
                tpm.esys.policy_signed(
                    key,
                    session,
                    software_signature(tss, software, a_hash),
                    nonce,
                    cp_hash,
                    policy_ref,
                    expiration,
                )

            for wrong in (
                policy_signed_digest(nonce, expiration + 1, cp_hash, policy_ref),
                policy_signed_digest(stale_nonce, expiration, cp_hash, policy_ref),
                policy_signed_digest(nonce, expiration, cp_hash, policy_ref + b"x"),
            ):
                with pytest.raises(tss.TSS2_Exception) as refused:
                    attempt(wrong)
                assert int(refused.value.rc) & 0x0BF == TPM_RC_SIGNATURE
            assert bytes(tpm.esys.policy_get_digest(session)) == bytes(32)
            attempt(policy_signed_digest(nonce, expiration, cp_hash, policy_ref))
            assert bytes(tpm.esys.policy_get_digest(session)) == policy_signed(
                public.name(), policy_ref
            )
    assert_nothing_loaded(tpm)


@pytest.mark.swtpm
def test_the_channel_key_authorizes_a_session_by_signing_in_the_tpm(tpm, tss, channel_key):
    """stockade.tpm.sealed.authorize_policy_signed: aHash signed by TPM2_Sign with the
    channel key, accepted by TPM2_PolicySigned; the digest is ours; nothing stays loaded."""
    session = start_session(tss, tpm, trial=False)
    with tpm.transient(session):
        tss.authorize_policy_signed(tpm, session, channel_key, UNSEAL_POLICY_REF)
        assert bytes(tpm.esys.policy_get_digest(session)) == policy_signed(
            channel_key.public.name(), UNSEAL_POLICY_REF
        )
    assert_nothing_loaded(tpm)


needs_tools = pytest.mark.skipif(
    shutil.which("tpm2_policysigned") is None,
    reason="tpm2-tools not installed (scripts/bootstrap.sh)",
)


def tpm2_tools(tcti: str, cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    """tpm2-tools commands on a TPM without a resource manager: flush before and after."""
    flush = f"export TPM2TOOLS_TCTI='{tcti}'\ntpm2_flushcontext -t; tpm2_flushcontext -s\n"
    result = subprocess.run(
        ["bash", "-c", f"set -e\n{flush}{script}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    subprocess.run(["bash", "-c", flush], cwd=cwd, capture_output=True, check=False)
    return result


@needs_tools
@pytest.mark.swtpm
@pytest.mark.crosscheck
def test_tpm2_tools_compute_the_same_policy_and_a_hash(
    tpm, tss, shared_software_tpm, channel_key, tmp_path
):
    """tpm2_policysigned in a trial session (authObject: the channel key's public, loaded
    by tpm2_loadexternal), then tpm2_policypcr and tpm2_policycommandcode: the digests equal
    ours. In a real session, tpm2_policysigned --raw-data writes what it would have signed:
    nonceTPM || expiration || cpHashA || policyRef, whose SHA-256 is our aHash."""
    selection = PcrSelection.parse(SELECTION_TEXT)
    values = tpm.read_pcrs(selection)
    name = channel_key.public.name()
    (tmp_path / "key.pub").write_bytes(channel_key.public.marshal_tpm2b())
    (tmp_path / "ref").write_bytes(UNSEAL_POLICY_REF)
    # a trial session checks no signature, but tpm2-tools wants a well-formed DER one
    (tmp_path / "dummy.sig").write_bytes(utils.encode_dss_signature(1, 1))
    result = tpm2_tools(
        shared_software_tpm.tcti,
        tmp_path,
        f"""
tpm2_loadexternal -C n -u key.pub -c key.ctx -n key.name
tpm2_startauthsession -S trial.ctx
tpm2_policysigned -S trial.ctx -g sha256 -c key.ctx -q ref -f ecdsa -s dummy.sig -L signed.policy
tpm2_policypcr -S trial.ctx -l {SELECTION_TEXT}
tpm2_policycommandcode -S trial.ctx -L unseal.policy TPM2_CC_Unseal
tpm2_flushcontext trial.ctx
tpm2_startauthsession --policy-session -S real.ctx
tpm2_policysigned -S real.ctx -g sha256 -c key.ctx -q ref -x -t 300 --raw-data raw.bin
tpm2_flushcontext real.ctx
""",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "key.name").read_bytes() == name
    assert (tmp_path / "signed.policy").read_bytes() == policy_signed(name, UNSEAL_POLICY_REF)
    assert (tmp_path / "unseal.policy").read_bytes() == unseal_policy(selection, values, name)
    raw = (tmp_path / "raw.bin").read_bytes()
    nonce = raw[:32]
    assert raw == nonce + struct.pack(">i", 300) + UNSEAL_POLICY_REF
    assert hashlib.sha256(raw).digest() == policy_signed_digest(nonce, 300, b"", UNSEAL_POLICY_REF)
    assert_nothing_loaded(tpm)
