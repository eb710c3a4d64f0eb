#!/usr/bin/env bash
# Kubermesh developer entry point. Run as root on Debian 12.
#   ./dev.sh build   install what the host needs, then build the image into out/
#   ./dev.sh test    install what the host needs, then run the whole test suite
#   ./dev.sh setup   only install what the host needs (+ the .venv)
set -euo pipefail
cd "$(dirname "$0")"

# frr-pythontools: frr-reload.py, which the node agent applies its FRR configuration with.
# etcd, iperf3 and the CNI plugins: the overlay and anycast lab tests and benchmarks.
# nftables: the lab applies the node's packet filter (nft -f) in every namespace.
# libsystemd-dev, pkg-config, gcc, python3-dev: systemd-python (requirements.lock) has no
# wheel on PyPI; pip builds it from source, for the .venv and for the image.
HOST_PACKAGES=(frr frr-pythontools iproute2 iputils-ping python3 python3-venv util-linux procps
  etcd-server etcd-client iperf3 containernetworking-plugins nftables dnsmasq-base iptables
  libsystemd-dev pkg-config gcc python3-dev)
# The image build (mkosi → squashfs + verity → UKI → ESP → GPT) and its VM tests.
IMAGE_PACKAGES=(mkosi debootstrap systemd-container squashfs-tools cryptsetup-bin mtools
  dosfstools systemd-boot-efi binutils fdisk cpio zstd qemu-system-x86 ovmf openssh-client
  sbsigntool)
# Kubernetes from Debian's own source package (image/kubesource.py): Go, the one
# vendored module it swaps, dpkg-source, rsync (its make), and the images' tools, busybox
# and libc6-dev (pause is linked statically).
KUBERNETES_PACKAGES=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev make rsync umoci skopeo
  busybox-static libc6-dev)
VENV=.venv

say() { printf '‣ %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "dev.sh: this needs root (network namespaces, FRR, image builds): run it as root (e.g. with sudo)" >&2
    exit 1
  fi
}

host_packages() {
  local missing=()
  for p in "${HOST_PACKAGES[@]}" "${IMAGE_PACKAGES[@]}" "${KUBERNETES_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "Installing host packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The host's own FRR service is not used: the lab runs FRR inside namespaces.
  mkdir -p /run/frr && chown frr:frr /run/frr
}

venv() {
  # Debian's Python, the same the image ships; pinned dependencies.
  local stamp="$VENV/.stamp"
  local want
  want=$(cat requirements.lock requirements-dev.lock pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "Creating $VENV with the pinned dependencies"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.lock -r requirements-dev.lock 2> >(grep -v "^WARNING: Location" >&2)
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
  fi
}

setup() { need_root; host_packages; venv; }

case "${1:-}" in
  setup) setup ;;
  build)
    setup
    shift
    # Niced: the build shares the machine with timing-sensitive lab benchmarks.
    exec nice -n 10 "$VENV/bin/kubermesh" build --output out "$@"
    ;;
  test)
    setup
    shift
    # The whole suite includes the VM tests, which boot out/kubermesh.raw:
    # build it first on a clean checkout.
    if [ $# -eq 0 ] && [ ! -f out/kubermesh.raw ]; then
      say "No image in out/ yet: building it for the VM tests"
      nice -n 10 "$VENV/bin/kubermesh" build --output out
    fi
    exec "$VENV/bin/pytest" "$@"
    ;;
  *)
    sed -n '2,6p' "$0" >&2
    exit 2
    ;;
esac
