#!/usr/bin/env bash
# Build the Stockade OCI image without Docker: one image carrying the `stockade` CLI (verifier,
# agent, Kubernetes components), the OCI hook's prebuilt C client, libtss2 and tpm2-openssl.
#
#   scripts/build_image.sh [OUT]        (default build/image; `make image` runs it)
#
# A Debian 12 rootfs from mmdebstrap (variant minbase, docs and locales left out), a venv at
# /opt/stockade holding the project's wheel and its dependencies as pip wheels pinned by
# constraints.txt (built or fetched here, installed offline in the rootfs), packed into the OCI
# layout OUT/oci with umoci and tagged with the project's version: OUT/oci:<version>, e.g.
# stockade:0.1.0 as deploy/kubernetes names it. Needs root (mmdebstrap's root mode and
# umoci's ownership), mmdebstrap and umoci (scripts/bootstrap.sh), network access to Debian's
# mirror and PyPI. Prints the reference, the build time and the image size.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(realpath -m "${1:-build/image}")
suite=${STOCKADE_IMAGE_SUITE:-bookworm}
mirror=${STOCKADE_IMAGE_MIRROR:-http://deb.debian.org/debian}
venv=/opt/stockade
uid=10001
start=$SECONDS

for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || {
    echo "build_image: $tool is not installed (scripts/bootstrap.sh installs it)" >&2
    exit 2
  }
done
if ((EUID != 0)); then
  echo "build_image: run as root (mmdebstrap root mode, image file ownership)" >&2
  exit 2
fi
hook_client=$PWD/.venv/bin/stockade-oci-hook-client
if [[ ! -x $hook_client ]]; then
  echo "build_image: $hook_client is missing (make bootstrap builds it)" >&2
  exit 2
fi

mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
wheels=$work/wheels
mkdir -p "$wheels"

# The project's wheel, then every dependency as a wheel pinned by constraints.txt (pip's
# cache keeps the ones built from source, tpm2-pytss, for the next build).
.venv/bin/pip wheel -q --no-deps -w "$wheels" .
project_wheel=$(find "$wheels" -maxdepth 1 -name 'stockade-*.whl' -printf '%f\n')
version=${project_wheel#stockade-}
version=${version%%-*}
.venv/bin/pip wheel -q -c constraints.txt -w "$wheels" "$wheels/${project_wheel}[tpm,kube]"
# pip itself, run from its wheel inside the rootfs, so the image carries no pip.
pip_version=$(.venv/bin/python -c 'import pip; print(pip.__version__)')
.venv/bin/pip download -q --no-deps -d "$work/pip" "pip==$pip_version"
pip_wheel=$(find "$work/pip" -maxdepth 1 -name 'pip-*.whl' -printf '%f\n')
cp constraints.txt "$wheels/"
echo "build_image: wheels ready after $((SECONDS - start)) s"

layout=$out/oci
tag=$version
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
bundle=$work/bundle
umoci unpack --image "$layout:$tag" "$bundle"
rmdir "$bundle/rootfs"

packages=(
  python3 ca-certificates tpm2-openssl openssl passwd
  # what tpm2-pytss links and the TCTIs it loads (hardware TPM, swtpm for development)
  libtss2-esys-3.0.2-0 libtss2-fapi1 libtss2-mu0 libtss2-rc0 libtss2-sys1 libtss2-tctildr0
  libtss2-tcti-device0 libtss2-tcti-swtpm0
)
include=$(IFS=,; echo "${packages[*]}")
# shellcheck disable=SC2016 # "$1" is the rootfs, expanded by the hook's shell
cleanup='rm -rf "$1"/tmp/wheels "$1"/tmp/pip-* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* \
"$1"/var/log/* "$1"/usr/lib/udev/hwdb.bin "$1"/usr/lib/udev/hwdb.d'
mmdebstrap --quiet --variant=minbase --include="$include" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="copy-in $wheels $work/pip/$pip_wheel /tmp" \
  --customize-hook="chroot \"\$1\" python3 -m venv --without-pip $venv" \
  --customize-hook="chroot \"\$1\" env -i PATH=/usr/bin:/bin $venv/bin/python /tmp/$pip_wheel/pip install -q \
--no-index --no-cache-dir --no-compile --disable-pip-version-check --find-links /tmp/wheels \
-c /tmp/wheels/constraints.txt \"/tmp/wheels/${project_wheel}[tpm,kube]\"" \
  --customize-hook="chroot \"\$1\" $venv/bin/python -m compileall -q -j 0 $venv/lib" \
  --customize-hook="copy-in $hook_client $venv/bin" \
  --customize-hook="chroot \"\$1\" chmod 0755 $venv/bin/stockade-oci-hook-client" \
  --customize-hook="chroot \"\$1\" useradd --system --key SYS_UID_MAX=$uid --uid $uid --user-group \
--groups tss --home-dir /var/lib/stockade --create-home --shell /usr/sbin/nologin stockade" \
  --customize-hook="$cleanup" \
  "$suite" "$bundle/rootfs" "$mirror"
umoci repack --image "$layout:$tag" "$bundle"

umoci config --image "$layout:$tag" \
  --os linux --architecture amd64 \
  --author "Stockade" \
  --config.entrypoint "$venv/bin/stockade" \
  --clear config.cmd --config.cmd=--help \
  --config.user "$uid:$uid" \
  --config.workingdir /var/lib/stockade \
  --config.env "PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --config.env LANG=C.UTF-8 \
  --config.env STOCKADE_HOME=/var/lib/stockade \
  --config.label "org.opencontainers.image.title=stockade" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0" \
  --manifest.annotation "org.opencontainers.image.ref.name=$tag"
umoci gc --layout "$layout"

size=$(du -sh "$layout" | cut -f1)
echo "build_image: stockade:$version in $layout:$tag ($size) built in $((SECONDS - start)) s"
