"""Secrets sealed in pure Python to a node's EK, PCRs and channel key, imported and unsealed
by a real TPM (swtpm): round trips, the refusals a node must see, and cross-checks against
code that is not ours (the TPM's own policy sessions, tpm2-tools, tpm2_pytss.utils.unwrap).

The channel key (the PolicySigned authorizer) is a P-256 key made in the TPM, as the agent
makes it; tests/agent/test_secret_binding.py shows a second TPM user refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_CC, TPM2_HT, TPM2_SE
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SENSITIVE,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
)
from tpm2_pytss.utils import unwrap

from stockade.evidence import PcrSelection, PcrValues
from stockade.evidence.algorithms import Alg, hash_algorithm
from stockade.evidence.duplication import SealedSecret, SealingError, open_payload, seal_secret
from stockade.evidence.policy_digest import (
    TPM_CC_DUPLICATE,
    TPM_CC_UNSEAL,
    UNSEAL_POLICY_REF,
    policy_command_code,
    policy_pcr,
    policy_signed_digest,
    unseal_policy,
)
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.tpm.device import Tpm
from stockade.tpm.ek import loaded_ek, read_endorsement
from stockade.tpm.node_key import NodeKey, create_node_key
from stockade.tpm.sealed import SecretRefused, authorize_policy_signed, unseal_secret

pytestmark = pytest.mark.swtpm

KINDS = list(KeyKind)
SELECTION_TEXT = "sha256:0,1,2,3,7,12"
SELECTION = PcrSelection.parse(SELECTION_TEXT)
POLICY_FAIL = 0x99D  # TPM_RC_POLICY_FAIL for session 1


def ek_public(tpm: Tpm, kind: KeyKind) -> TpmPublic:
    return read_endorsement(tpm, kind).public


def seal_to_current(
    tpm: Tpm, kind: KeyKind, payload: bytes, channel: NodeKey, selection=SELECTION
) -> SealedSecret:
    """Sealed to this TPM's EK, its current PCRs and ``channel`` (the authorizing key)."""
    return seal_secret(
        ek_public(tpm, kind),
        payload,
        selection,
        tpm.read_pcrs(selection),
        authorizer_name=channel.public.name(),
    )


def loaded_sessions(tpm: Tpm) -> int:
    _, data = tpm.esys.get_capability(TPM2_CAP.HANDLES, TPM2_HT.LOADED_SESSION << 24, 64)
    return len(data.data.handles)


def assert_nothing_left(tpm: Tpm) -> None:
    assert tpm.transient_object_count() == 0
    assert loaded_sessions(tpm) == 0


@pytest.fixture(scope="module")
def tpm(shared_software_tpm):
    with Tpm(shared_software_tpm.tcti) as opened:
        yield opened


@pytest.fixture(scope="module")
def channel(tpm) -> NodeKey:
    """The node's channel key, made in the shared TPM."""
    return create_node_key(tpm)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("size", [1, 127, 128, 129, 4096])
def test_round_trip(tpm, channel, kind, size):
    payload = os.urandom(size)
    sealed = seal_to_current(tpm, kind, payload, channel)
    name = channel.public.name()
    assert sealed.public.auth_policy == unseal_policy(SELECTION, tpm.read_pcrs(SELECTION), name)
    # as it travels: binary, then JSON
    travelled = SealedSecret.from_json(SealedSecret.unmarshal(sealed.marshal()).to_json())
    assert unseal_secret(tpm, kind, travelled, channel) == payload
    assert_nothing_left(tpm)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_fifty_unseals_leave_no_objects_or_sessions(tpm, channel, kind):
    sealed = seal_to_current(tpm, kind, b"fifty times", channel)
    for _ in range(50):
        assert unseal_secret(tpm, kind, sealed, channel) == b"fifty times"
    assert_nothing_left(tpm)
    # refusals clean up too
    tpm.extend_pcr(12, b"refusal")
    for _ in range(5):
        with pytest.raises(SecretRefused):
            unseal_secret(tpm, kind, sealed, channel)
    assert_nothing_left(tpm)


# -- the refusals a node must see ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_blob_for_tpm_a_does_not_import_on_tpm_b(make_software_tpm, kind):
    """The attack: a stolen blob taken to another machine (another TPM, another EK)."""
    tpm_a, tpm_b = make_software_tpm(), make_software_tpm()
    with Tpm(tpm_a.tcti) as a, Tpm(tpm_b.tcti) as b:
        channel_a, channel_b = create_node_key(a), create_node_key(b)
        assert ek_public(a, kind) != ek_public(b, kind)
        sealed = seal_to_current(a, kind, b"only for A", channel_a)
        assert b.read_pcrs(SELECTION) == a.read_pcrs(SELECTION)  # same PCRs, other EK
        with pytest.raises(SecretRefused, match="refused to import") as refused:
            unseal_secret(b, kind, sealed, channel_b)  # B's own channel key authorizes
        assert refused.value.step == "import"
        assert refused.value.response_code != 0
        assert "only for A" not in str(refused.value)
        assert_nothing_left(b)
        assert unseal_secret(a, kind, sealed, channel_a) == b"only for A"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_extending_any_selected_pcr_refuses_unseal(tpm, channel, kind):
    for index in SELECTION.banks[0].pcrs:
        sealed = seal_to_current(tpm, kind, b"boot state bound", channel)
        assert unseal_secret(tpm, kind, sealed, channel) == b"boot state bound"
        tpm.extend_pcr(index, b"something else booted")
        with pytest.raises(SecretRefused, match="refused to unseal") as refused:
            unseal_secret(tpm, kind, sealed, channel)
        assert refused.value.step == "unseal"
        assert refused.value.response_code == POLICY_FAIL
        assert "policy" in str(refused.value)
    assert_nothing_left(tpm)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_pcrs_outside_the_selection_do_not_matter(tpm, channel, kind):
    sealed = seal_to_current(tpm, kind, b"unaffected", channel)
    for index in (4, 8, 16, 23):
        tpm.extend_pcr(index, b"unrelated measurement")
        assert unseal_secret(tpm, kind, sealed, channel) == b"unaffected"
    # the sha1 bank of a selected PCR is not part of a sha256-only selection either
    tpm.extend_pcr(7, b"sha1 only", PcrSelection.parse("sha1:7"))
    assert unseal_secret(tpm, kind, sealed, channel) == b"unaffected"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_sealing_to_wrong_predicted_values_refuses_unseal(tpm, channel, kind):
    current = tpm.read_pcrs(SELECTION)
    banks = {alg: dict(values) for alg, values in current.banks.items()}
    banks[Alg.SHA256][7] = hashlib.sha256(b"a predicted but different PCR 7").digest()
    sealed = seal_secret(
        ek_public(tpm, kind),
        b"never",
        SELECTION,
        PcrValues(banks),
        authorizer_name=channel.public.name(),
    )
    with pytest.raises(SecretRefused, match="refused to unseal"):
        unseal_secret(tpm, kind, sealed, channel)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_multi_bank_selection(tpm, channel, kind):
    selection = PcrSelection.parse("sha1:0,7+sha256:0,1,2,3,7,12")
    sealed = seal_to_current(tpm, kind, b"two banks", channel, selection)
    assert unseal_secret(tpm, kind, sealed, channel) == b"two banks"
    tpm.extend_pcr(0, b"sha1 only", PcrSelection.parse("sha1:0"))
    with pytest.raises(SecretRefused, match="refused to unseal"):
        unseal_secret(tpm, kind, sealed, channel)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_tampering_is_refused_never_wrong_data(tpm, channel, kind):
    """Flip bytes across every field: the TPM refuses the import (outer HMAC, seed) or the
    envelope refuses the payload (AES-GCM); nothing ever returns other bytes."""
    payload = b"the real secret"
    sealed = seal_to_current(tpm, kind, payload, channel)
    outcomes: dict[str, set[str]] = {}
    for field in ("duplicate", "encrypted_seed", "object_public", "ciphertext"):
        original = getattr(sealed, field)
        positions = sorted({2, 3, len(original) // 2, len(original) - 1, 10, 40})
        for position in positions:
            flipped = bytearray(original)
            flipped[position] ^= 0x04
            try:
                tampered = replace(sealed, **{field: bytes(flipped)})
                result = unseal_secret(tpm, kind, tampered, channel)
            except SecretRefused as refused:
                outcomes.setdefault(field, set()).add(refused.step)
                continue
            except SealingError:
                outcomes.setdefault(field, set()).add("parse" if field != "ciphertext" else "gcm")
                continue
            raise AssertionError(f"{field}[{position}] flipped returned {len(result)} bytes")
    for field in ("duplicate", "encrypted_seed", "object_public"):
        # the TPM's integrity check, or our parser for a flipped size or attribute
        assert "import" in outcomes[field]
        assert outcomes[field] <= {"import", "parse"}
    assert outcomes["ciphertext"] == {"gcm"}
    assert_nothing_left(tpm)
    assert unseal_secret(tpm, kind, sealed, channel) == payload


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_rewritten_policy_is_refused_at_import(tpm, channel, kind):
    """The attack: replace authPolicy with one that needs no PCRs (PolicyCommandCode only)."""
    sealed = seal_to_current(tpm, kind, b"guarded", channel)
    weaker = replace(sealed.public, auth_policy=policy_command_code(TPM_CC_UNSEAL, bytes(32)))
    forged = replace(sealed, object_public=weaker.marshal_tpm2b())
    with pytest.raises(SecretRefused, match="refused to import") as refused:
        unseal_secret(tpm, kind, forged, channel)
    # TPM_RC_INTEGRITY, a format-one code (parameter number in bits 6 and 8-11)
    assert refused.value.response_code & 0x0BF == 0x09F


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_the_imported_object_cannot_be_duplicated_again(tpm, channel, kind):
    """The attack: import the blob, then TPM2_Duplicate the object out to a parent the
    attacker controls. The DUP role needs PolicyCommandCode(Duplicate): refused, even in a
    session the channel key authorized with the PCRs holding."""
    sealed = seal_to_current(tpm, kind, b"stays here", channel)
    esys = tpm.esys
    public, _ = TPM2B_PUBLIC.unmarshal(sealed.object_public)
    duplicate, _ = TPM2B_PRIVATE.unmarshal(sealed.duplicate)
    seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(sealed.encrypted_seed)
    with loaded_ek(tpm, kind) as (ek, _):
        with tpm.endorsement_policy_session() as session:
            private = esys.import_(
                ek, b"", public, duplicate, seed, TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                session1=session,
            )  # fmt: skip
        with tpm.endorsement_policy_session() as session:
            handle = esys.load(ek, private, public, session1=session)
    with tpm.transient(handle):
        for authorized in (False, True):
            policy = esys.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256,
            )  # fmt: skip
            with tpm.transient(policy):
                if authorized:
                    authorize_policy_signed(tpm, policy, channel, UNSEAL_POLICY_REF)
                    pcrs, _ = TPML_PCR_SELECTION.unmarshal(SELECTION.marshal())
                    esys.policy_pcr(policy, b"", pcrs)
                esys.policy_command_code(policy, TPM2_CC(TPM_CC_DUPLICATE))
                with pytest.raises(Exception, match="policy check failed"):
                    no_inner = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
                    esys.duplicate(handle, ESYS_TR.NULL, None, no_inner, session1=policy)
    assert_nothing_left(tpm)


def test_a_blob_for_the_rsa_ek_does_not_import_under_the_ecc_ek(tpm, channel):
    sealed = seal_to_current(tpm, KeyKind.RSA, b"x", channel)
    with pytest.raises(SecretRefused, match="refused to import"):
        unseal_secret(tpm, KeyKind.ECC, sealed, channel)
    assert_nothing_left(tpm)


def test_the_secret_stays_out_of_logs_and_errors(tpm, channel, caplog):
    payload = b"needle-" + os.urandom(8).hex().encode()
    sealed = seal_to_current(tpm, KeyKind.ECC, payload, channel)
    with caplog.at_level(logging.DEBUG):
        assert unseal_secret(tpm, KeyKind.ECC, sealed, channel) == payload
        tpm.extend_pcr(3, b"change")
        with pytest.raises(SecretRefused) as refused:
            unseal_secret(tpm, KeyKind.ECC, sealed, channel)
    assert payload.decode() not in caplog.text
    assert payload.decode() not in str(refused.value)
    assert refused.value.__cause__ is None


# -- policy digests: ours equal the TPM's ------------------------------------------------------


def trial_digest(tpm: Tpm, selection: PcrSelection, pcr_digest: bytes, command_code: int | None):
    session = tpm.esys.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )  # fmt: skip
    with tpm.transient(session):
        pcrs, _ = TPML_PCR_SELECTION.unmarshal(selection.marshal())
        tpm.esys.policy_pcr(session, pcr_digest, pcrs)
        if command_code is not None:
            tpm.esys.policy_command_code(session, TPM2_CC(command_code))
        return bytes(tpm.esys.policy_get_digest(session))


@pytest.mark.parametrize(
    "text", [SELECTION_TEXT, "sha256:16", "sha1:0,7+sha256:4,23", "sha256:4,23+sha1:0,7"]
)
def test_policy_digests_equal_the_tpms_trial_session(tpm, text):
    """PolicyPCR then PolicyCommandCode; with PolicySigned first (the whole unseal policy):
    tests/evidence/test_policy_digest.py."""
    selection = PcrSelection.parse(text)
    tpm.extend_pcr(16, b"make PCR 16 non-zero")
    values = tpm.read_pcrs(selection)
    # the TPM reads its own PCRs (empty pcrDigest)
    assert trial_digest(tpm, selection, b"", None) == policy_pcr(selection, values)
    assert trial_digest(tpm, selection, b"", TPM_CC_UNSEAL) == policy_command_code(
        TPM_CC_UNSEAL, policy_pcr(selection, values)
    )
    # predicted values: the TPM takes our composite digest as given
    predicted = PcrValues(
        {
            bank.hash_alg: {i: hashlib.new(bank.bank_name, b"%d" % i).digest() for i in bank.pcrs}
            for bank in selection.banks
        }
    )
    composite = predicted.composite_digest(selection, hash_algorithm(Alg.SHA256))
    assert trial_digest(tpm, selection, composite, TPM_CC_UNSEAL) == policy_command_code(
        TPM_CC_UNSEAL, policy_pcr(selection, predicted)
    )
    assert_nothing_left(tpm)


# -- cross-checks with code that is not ours --------------------------------------------------

needs_tools = pytest.mark.skipif(
    shutil.which("tpm2_import") is None, reason="tpm2-tools not installed (scripts/bootstrap.sh)"
)


def run_script(tcti: str, cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run tpm2-tools commands; swtpm has no resource manager, so flush before and after."""
    wrapped = f"""
set -e
export TPM2TOOLS_TCTI='{tcti}'
tpm2_flushcontext -t; tpm2_flushcontext -s
{script}
"""
    result = subprocess.run(
        ["bash", "-c", wrapped], cwd=cwd, capture_output=True, text=True, check=False
    )
    flush = f"export TPM2TOOLS_TCTI='{tcti}'; tpm2_flushcontext -t; tpm2_flushcontext -s"
    subprocess.run(["bash", "-c", flush], cwd=cwd, capture_output=True, check=False)
    return result


@needs_tools
@pytest.mark.crosscheck
def test_tpm2_tools_policy_equals_ours(tpm, channel, shared_software_tpm, tmp_path):
    """PolicyPCR and PolicyCommandCode; tpm2_policysigned is checked in
    tests/evidence/test_policy_digest.py."""
    values = tpm.read_pcrs(SELECTION)
    result = run_script(
        shared_software_tpm.tcti,
        tmp_path,
        f"""
tpm2_createpolicy --policy-pcr -l {SELECTION_TEXT} -L pcr.policy
tpm2_startauthsession -S trial.ctx
tpm2_policypcr -S trial.ctx -l {SELECTION_TEXT}
tpm2_policycommandcode -S trial.ctx -L unseal.policy TPM2_CC_Unseal
tpm2_flushcontext trial.ctx
""",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pcr.policy").read_bytes() == policy_pcr(SELECTION, values)
    assert (tmp_path / "unseal.policy").read_bytes() == policy_command_code(
        TPM_CC_UNSEAL, policy_pcr(SELECTION, values)
    )


def tools_unseal(
    tcti: str, cwd: Path, kind: KeyKind, authorizer: ec.EllipticCurvePrivateKey | None
) -> subprocess.CompletedProcess[str]:
    """tpm2-tools do what a node does, with files: tpm2_import under the EK, tpm2_load, a
    policy session with tpm2_policysigned (the authorizing key's public loaded by
    tpm2_loadexternal; aHash written by --raw-data, signed here), tpm2_policypcr,
    tpm2_policycommandcode, tpm2_unseal into key.out. Without ``authorizer``: the session
    of a TPM user who cannot sign, PolicyPCR + PolicyCommandCode only."""
    # swtpm has no resource manager: each tool leaves the objects it loaded; flush them
    setup = [
        f"tpm2_createek -c ek.ctx -G {kind.value}",
        "tpm2_startauthsession --policy-session -S ek1.ctx",
        "tpm2_policysecret -S ek1.ctx -c e",
        "tpm2_import -C ek.ctx -P session:ek1.ctx -u obj.pub -i obj.dup -s obj.seed -r obj.priv",
        "tpm2_flushcontext ek1.ctx",
        "tpm2_startauthsession --policy-session -S ek2.ctx",
        "tpm2_policysecret -S ek2.ctx -c e",
        "tpm2_load -C ek.ctx -P session:ek2.ctx -u obj.pub -r obj.priv -c obj.ctx",
        "tpm2_flushcontext ek2.ctx",
        "tpm2_loadexternal -C n -u auth.pub -c auth.ctx",
        "tpm2_startauthsession --policy-session -S unseal.ctx",
    ]
    signed = "-g sha256 -c auth.ctx -q ref -x -t 0"
    if authorizer is not None:
        setup.append(f"tpm2_policysigned -S unseal.ctx {signed} --raw-data raw.bin")
    unseal = [
        f"tpm2_policypcr -S unseal.ctx -l {SELECTION_TEXT}",
        "tpm2_policycommandcode -S unseal.ctx TPM2_CC_Unseal",
        "tpm2_unseal -c obj.ctx -p session:unseal.ctx -o key.out",
        "tpm2_flushcontext unseal.ctx",
    ]
    if authorizer is not None:
        unseal.insert(0, f"tpm2_policysigned -S unseal.ctx {signed} -f ecdsa -s auth.sig")

    def run(steps: list[str], *, flush_sessions: bool) -> subprocess.CompletedProcess[str]:
        flush = "tpm2_flushcontext -t" + ("; tpm2_flushcontext -s" if flush_sessions else "")
        script = "".join(f"{step}\ntpm2_flushcontext -t\n" for step in steps)
        return subprocess.run(
            ["bash", "-c", f"set -e\nexport TPM2TOOLS_TCTI='{tcti}'\n{flush}\n{script}"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )

    try:
        first = run(setup, flush_sessions=True)
        if first.returncode != 0 or authorizer is None:
            return first if first.returncode != 0 else run(unseal, flush_sessions=False)
        raw = (cwd / "raw.bin").read_bytes()  # nonceTPM || expiration || cpHashA || policyRef
        a_hash = policy_signed_digest(raw[:32], 0, b"", UNSEAL_POLICY_REF)
        assert raw == raw[:32] + bytes(4) + UNSEAL_POLICY_REF
        assert hashlib.sha256(raw).digest() == a_hash
        signature = authorizer.sign(a_hash, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        (cwd / "auth.sig").write_bytes(signature)  # DER, as tpm2-tools reads "ecdsa"
        return run(unseal, flush_sessions=False)
    finally:
        flush = f"export TPM2TOOLS_TCTI='{tcti}'; tpm2_flushcontext -t; tpm2_flushcontext -s"
        subprocess.run(["bash", "-c", flush], cwd=cwd, capture_output=True, check=False)


@needs_tools
@pytest.mark.crosscheck
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_tpm2_tools_import_and_unseal_our_blob(software_tpm, tmp_path, kind):
    """tpm2-tools recover the sealed key in a session the authorizing key signed for, and
    it opens the payload. Without tpm2_policysigned (a TPM user without the key), or after
    a PCR extend, tpm2_unseal fails. The authorizer here is a software P-256 key: tools can
    only sign with a key they can load, and only the agent holds the channel key's file."""
    authorizer = ec.generate_private_key(ec.SECP256R1())
    with Tpm(software_tpm.tcti) as tpm:
        template = create_node_key(tpm).public  # a channel key's attributes
        auth_public = template.with_public_key(authorizer.public_key())
        sealed = seal_secret(
            ek_public(tpm, kind),
            b"opened by tpm2-tools",
            SELECTION,
            tpm.read_pcrs(SELECTION),
            authorizer_name=auth_public.name(),
        )
    (tmp_path / "obj.pub").write_bytes(sealed.object_public)
    (tmp_path / "obj.dup").write_bytes(sealed.duplicate)
    (tmp_path / "obj.seed").write_bytes(sealed.encrypted_seed)
    (tmp_path / "auth.pub").write_bytes(auth_public.marshal_tpm2b())
    (tmp_path / "ref").write_bytes(sealed.policy_ref)

    without_key = tools_unseal(software_tpm.tcti, tmp_path, kind, None)
    assert without_key.returncode != 0
    assert "tpm2_unseal" in without_key.stderr or "policy" in without_key.stderr.lower()
    assert not (tmp_path / "key.out").exists()

    result = tools_unseal(software_tpm.tcti, tmp_path, kind, authorizer)
    assert result.returncode == 0, result.stderr
    key = (tmp_path / "key.out").read_bytes()
    assert open_payload(sealed, key) == b"opened by tpm2-tools"

    (tmp_path / "key.out").unlink()
    with Tpm(software_tpm.tcti) as tpm:
        tpm.extend_pcr(7, b"changed")
    result = tools_unseal(software_tpm.tcti, tmp_path, kind, authorizer)
    assert result.returncode != 0
    assert "tpm2_unseal" in result.stderr or "policy" in result.stderr.lower()
    assert not (tmp_path / "key.out").exists()


def software_parent(kind: KeyKind, template: TpmPublic):
    """A storage parent whose private key we hold, with the EK template's parameters."""
    if kind is KeyKind.RSA:
        private = rsa.generate_private_key(65537, 2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return private, template.with_public_key(private.public_key())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_tpm2_pytss_unwrap_recovers_our_duplicate(tpm, channel, kind):
    """tpm2_pytss.utils.unwrap (the inverse of its own wrap(), written by others) opens our
    blob given the parent's private key: the same TPMT_SENSITIVE the TPM would import."""
    private, parent = software_parent(kind, ek_public(tpm, kind))
    values = tpm.read_pcrs(SELECTION)
    sealed = seal_secret(
        parent,
        b"unwrapped elsewhere",
        SELECTION,
        values,
        authorizer_name=channel.public.name(),
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    parent_public, _ = TPMT_PUBLIC.unmarshal(parent.marshal())
    parent_sensitive = TPMT_SENSITIVE.from_pem(pem)
    public, _ = TPM2B_PUBLIC.unmarshal(sealed.object_public)
    duplicate, _ = TPM2B_PRIVATE.unmarshal(sealed.duplicate)
    seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(sealed.encrypted_seed)
    sensitive = unwrap(parent_public, parent_sensitive, public, duplicate, seed).sensitiveArea
    assert int(sensitive.sensitiveType) == TPM2_ALG.KEYEDHASH
    assert bytes(sensitive.authValue) == b""
    key = bytes(sensitive.sensitive.bits)
    assert (
        bytes(public.publicArea.unique.keyedHash)
        == hashlib.sha256(bytes(sensitive.seedValue) + key).digest()
    )
    assert bytes(public.get_name()) == sealed.name()
    assert open_payload(sealed, key) == b"unwrapped elsewhere"

    # and a different parent key: unwrap's own integrity check refuses it
    other_private, _ = software_parent(kind, ek_public(tpm, kind))
    other_pem = other_private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    other_public, _ = TPMT_PUBLIC.unmarshal(
        parent.with_public_key(other_private.public_key()).marshal()
    )
    with pytest.raises(Exception):  # noqa: B017 - unwrap raises ValueError or its own
        unwrap(other_public, TPMT_SENSITIVE.from_pem(other_pem), public, duplicate, seed)
