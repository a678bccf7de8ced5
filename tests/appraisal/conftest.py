"""Session evidence for the appraisal tests, made once: org keys, a development platform
with Debian's shim and GRUB, two signed releases (1.0.0 at security version 3, 0.9.0 at
2), and real quotes from software TPMs after real boots of them. Tests only appraise
the kept bytes, so they are fast.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from appraisal_support import (
    KERNEL_STUB,
    NOW,
    Boots,
    World,
    boot_release,
    capture,
    make_ak,
    make_release,
)

from stockade.appraisal.appraise import NodeView, ReferenceSet, build_references
from stockade.appraisal.policy import Policy, parse_policy
from stockade.boot.platform import (
    DEBIAN_GRUB,
    DEBIAN_SHIM,
    REFERENCE_FILE,
    create_development_platform,
)
from stockade.boot.secure_boot import sign_image
from stockade.boot.tamper import flip_section_byte
from stockade.release.keys import KeyType, generate_key_set
from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import start_swtpm


@pytest.fixture(scope="session")
def _require_tools() -> None:
    """The tools the development world is built with; only tests that use it need them (the
    pure decision and execution tests run without)."""
    missing = [tool for tool in ("sbsign", "sbverify", "swtpm") if not shutil.which(tool)]
    missing += [str(path) for path in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not path.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/bootstrap.sh)")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, _require_tools: None) -> World:
    base = tmp_path_factory.mktemp("appraisal")
    keys = generate_key_set(base / "keys", KeyType.ECDSA_P256, "Stockade Test", NOW)
    rogue = generate_key_set(base / "rogue", KeyType.ED25519, "Rogue", NOW)
    platform = create_development_platform(
        base / "platform", keys.paths.secure_boot_key, keys.paths.secure_boot_cert
    )
    signed = base / "vmlinuz.signed"
    sign_image(KERNEL_STUB, signed, keys.paths.secure_boot_key, keys.paths.secure_boot_cert)
    modified = base / "vmlinuz.modified"
    modified.write_bytes(flip_section_byte(signed.read_bytes()))
    return World(
        keys=keys,
        rogue_keys=rogue,
        platform=platform,
        platform_document=json.loads((base / "platform" / REFERENCE_FILE).read_text()),
        signed_kernel=signed,
        modified_kernel=modified,
        current=make_release(base, keys, signed, "1.0.0", 3, 3),
        old=make_release(base, keys, signed, "0.9.0", 2, 2),
    )


@pytest.fixture(scope="session")
def boots(world: World, stockade_home: Path, ek_ca: EkCa, swtpm_template: Path) -> Iterator[Boots]:
    node = start_swtpm("appraisal-node", stockade_home, ek_ca, template=swtpm_template)
    other = start_swtpm("appraisal-other", stockade_home, ek_ca)  # its own EK
    try:
        ak = make_ak(node)
        platform = world.platform
        current = world.current.directory
        log = boot_release(node, platform, current)
        good = capture(node, ak, log, "good")
        good_later = capture(node, ak, log, "good-later")
        reboot = capture(node, ak, boot_release(node, platform, current), "reboot")
        sb_off = platform.with_secure_boot(False)
        tampered = capture(
            node, ak, boot_release(node, sb_off, current, kernel=world.modified_kernel), "tampered"
        )
        secure_boot_off = capture(node, ak, boot_release(node, sb_off, current), "sb-off")
        rollback = capture(node, ak, boot_release(node, platform, world.old.directory), "rollback")
        other_ak = make_ak(other)
        other_tpm = capture(other, other_ak, boot_release(other, platform, current), "other")
        yield Boots(
            ak.public, good, good_later, reboot, tampered, secure_boot_off, rollback, other_tpm
        )
    finally:
        node.stop()
        other.stop()


@pytest.fixture(scope="session")
def policy(world: World) -> Policy:
    return parse_policy(world.document(), 1)


@pytest.fixture(scope="session")
def references(policy: Policy) -> ReferenceSet:
    return build_references(policy)


@pytest.fixture(scope="session")
def node(boots: Boots) -> NodeView:
    return NodeView("node-1", "node-1.example", boots.ak, None)
