"""Shell: a verified, measured boot chain for development nodes without TPM hardware.

Virtual UEFI firmware, a real shim and a real GRUB (Debian's, signed for the
platform with sbsign) and the organization's signed OS release, booted against a
software TPM: Secure Boot verifies each stage against db/dbx before it runs and
halts on a refusal; Measured Boot extends every stage into the TPM and writes the
TCG PC Client event log that real firmware would. What is measured, and in which
order, is ``stockade.appraisal.measured_boot``; reference values for the same boot
are ``stockade.appraisal.reference``.

The release is measured into PCR 12 (EV_IPL "stockade-release: <name> <version>
sha256:<manifest digest>" and "stockade-usr-verity: <root hash>"): not resettable,
and used by no firmware, shim or GRUB measurement.
"""

from stockade.boot.chain import BootResult, boot_node
from stockade.boot.errors import BootHalted, BootInputError
from stockade.boot.platform import BootStage, DevelopmentPlatform, create_development_platform
from stockade.boot.release import ReleaseImages, load_release, measure_release, release_reference

__all__ = [
    "BootHalted",
    "BootInputError",
    "BootResult",
    "BootStage",
    "DevelopmentPlatform",
    "ReleaseImages",
    "boot_node",
    "create_development_platform",
    "load_release",
    "measure_release",
    "release_reference",
]
