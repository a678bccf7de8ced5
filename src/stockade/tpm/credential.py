"""TPM2_ActivateCredential: recover a secret sealed to (EK, AK name) by MakeCredential."""

from __future__ import annotations

from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT

from stockade.evidence.credential import CredentialBlob
from stockade.evidence.marshal import tpm2b
from stockade.tpm.ak import AttestationKey, loaded_ak
from stockade.tpm.device import Tpm, tpm_command
from stockade.tpm.ek import loaded_ek


def activate_credential(tpm: Tpm, ak: AttestationKey, blob: CredentialBlob) -> bytes:
    """Return the secret; the TPM refuses unless it holds the EK and ``ak`` is the named key."""
    credential, _ = TPM2B_ID_OBJECT.unmarshal(tpm2b(blob.credential_blob))
    secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(tpm2b(blob.encrypted_secret))
    with (
        loaded_ak(tpm, ak) as ak_handle,
        loaded_ek(tpm, ak.ek_kind) as (ek_handle, _),
        tpm.endorsement_policy_session() as session,
        tpm_command("ActivateCredential"),
    ):
        recovered = tpm.esys.activate_credential(
            ak_handle, ek_handle, credential, secret, session1=ESYS_TR.PASSWORD, session2=session
        )
    return bytes(recovered)
