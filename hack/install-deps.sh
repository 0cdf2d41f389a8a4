#!/usr/bin/env bash
# Installs what taskyard's development, tests and local cluster need, from Debian packages and PyPI.
# Safe to run again: it only installs what is missing.
#   hack/install-deps.sh           system packages + the Python virtualenv
#   hack/install-deps.sh python    only the virtualenv
source "$(dirname "$0")/lib.sh"

SYSTEM_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah busybox-static
  mmdebstrap openssl curl iproute2 kmod gcc libc6-dev ipset
  chromium) # chromium: the dashboard's browser tests (Playwright drives it; it downloads no browser)

install_system() {
  local missing=() pkg
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run this script as root to install them"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_python() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    log "installing taskyard and its test dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$REPO_ROOT[test]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

case "${1:-all}" in
  python) install_python ;;
  all) install_system; install_python ;;
  *) die "usage: $0 [all|python]" ;;
esac
