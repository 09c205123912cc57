#!/usr/bin/env bash
# Install everything netflow-agent and its test suite need on Debian 12, then build the project
# into a virtualenv (.venv). Idempotent: a second run only re-installs the project itself.
#
#   ./scripts/setup.sh            as root (or with sudo available) on a fresh Debian 12 machine
#
# Environment: PYTHON (default python3, must be >= 3.11), VENV (default .venv),
# SKIP_APT=1 to skip the system packages (e.g. an image that has them already).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

# System packages: eBPF build (clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev
# pkg-config make gcc), Python (python3-dev python3-venv), kernel interfaces used by the
# agent and its privileged tests (iproute2 iptables nftables conntrack procps), reference
# collectors and exporters (tshark nfdump softflowd pmacct fprobe: bench/compare; tshark
# brings wireshark-common's editcap and mergecap, tests/e2e/test_pcap_differential.py), traffic
# and capture tools, strace (tests/ingest_nflog/test_c_decoder.py counts the reader's system
# calls); the Debian package build (debhelper dh-virtualenv python3.11-venv,
# scripts/build-deb) and its tests (systemd for systemd-analyze, man-db, python3-apt for
# the Ansible role's apt module).
APT_PACKAGES=(
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config make gcc
  python3 python3-dev python3-venv
  iproute2 iptables nftables conntrack procps
  tshark nfdump softflowd pmacct fprobe
  iputils-ping netcat-openbsd socat ethtool tcpdump strace
  git ca-certificates
  tmux prometheus
  debhelper dh-virtualenv python3.11-dev python3.11-venv systemd man-db python3-apt
)

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing_packages() {
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || printf '%s\n' "$pkg"
  done
}

install_system_packages() {
  if [ "${SKIP_APT:-0}" = "1" ]; then
    log "SKIP_APT=1: not installing system packages"
    return
  fi
  local missing
  missing="$(missing_packages)"
  if [ -z "$missing" ]; then
    log "system packages: all ${#APT_PACKAGES[@]} present"
    return
  fi
  log "system packages to install: $(echo "$missing" | tr '\n' ' ')"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer before it asks.
  echo "wireshark-common wireshark-common/install-setuid boolean false" \
    | as_root debconf-set-selections
  as_root apt-get update -q
  # shellcheck disable=SC2086 # one package per word
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    $missing
}

check_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $PYTHON is $("$PYTHON" -V 2>&1); netflow-agent needs Python >= 3.11" >&2
    exit 1
  fi
}

create_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "virtualenv $VENV: present ($("$VENV/bin/python" -V))"
  else
    log "virtualenv $VENV: creating with $("$PYTHON" -V)"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
}

install_project() {
  # The editable install also builds the optional eBPF extension through setup.py.
  log "installing netflow-agent (editable, extras test+lint) into $VENV"
  "$VENV/bin/python" -m pip install -q -e ".[test,lint]"
  log "installing the third-party plugin example (examples/plugin-example)"
  "$VENV/bin/python" -m pip install -q ./examples/plugin-example
  if "$VENV/bin/python" -c 'import netflow_agent.plugins.ingest_ebpf._loader' 2>/dev/null; then
    log "eBPF extension: built"
  else
    log "eBPF extension: NOT built (clang/bpftool/libbpf-dev missing?); bpf tests fail as root"
  fi
  "$VENV/bin/agent" --version
}

install_system_packages
check_python
create_venv
install_project
log "done: run the sample with  $VENV/bin/agent -c examples/quickstart.toml"
