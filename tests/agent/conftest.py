"""Fixtures of the agent tests that need a real cluster (cluster_support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_support import Cluster, boot_factory, running_cluster, shm_directory

from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import SoftwareTpm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ek_ca: EkCa) -> Iterator[Cluster]:
    """One verifier process per test module."""
    with running_cluster(tmp_path_factory.mktemp("membership"), ek_ca) as running:
        yield running


@pytest.fixture
def booted(
    cluster: Cluster, make_software_tpm: Callable[[], SoftwareTpm]
) -> Callable[[], tuple[SoftwareTpm, Path]]:
    """A fresh TPM (its own EK) booted through the development chain: (tpm, boot log)."""
    return boot_factory(cluster, make_software_tpm)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on the /dev/shm tmpfs (skipped where there is none)."""
    with shm_directory() as directory:
        yield directory
