#!/usr/bin/env bash
# Install what Stockade needs on Debian 12, only what is missing, then the venv.
# Idempotent: a second run with everything present touches nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config
  runc umoci mmdebstrap skopeo docker-registry cryptsetup-bin postgresql sbsigntool pesign systemd-boot-efi
  shim-unsigned grub-efi-amd64-bin tpm2-openssl
  python3-venv python3-dev gcc libc6-dev openssl faketime
  podman containerd systemd
  chromium chromium-driver
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian 12's own kubectl (1.20, kustomize v2.0.3), which the kustomize overlays must render
# with as well as with a newer kubectl that may own /usr/bin/kubectl: unpacked beside it, not
# installed (tests/kube/test_kustomize.py). Best effort: the test says so when it is missing.
DEBIAN_KUBECTL=/opt/debian-kubernetes-client/usr/bin/kubectl
if [[ ! -x $DEBIAN_KUBECTL ]]; then
  scratch=$(mktemp -d)
  if (cd "$scratch" && apt-get download -qq kubernetes-client >/dev/null 2>&1); then
    dpkg-deb -x "$scratch"/kubernetes-client_*.deb /opt/debian-kubernetes-client
  else
    echo "bootstrap: Debian's kubernetes-client not available; kustomize is tested with one kubectl" >&2
  fi
  rm -rf "$scratch"
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.stockade-installed
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp ]]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi
