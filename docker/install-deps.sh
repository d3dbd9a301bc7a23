#!/usr/bin/env bash
# Install the Debian packages named as arguments that are not installed yet.
# Quick when everything is there: only `dpkg-query` runs. Needs root (or sudo) otherwise.
set -euo pipefail
missing=()
for pkg in "$@"; do
  # kubectl is not a Debian package on every release; accept it when the binary exists.
  if [ "$pkg" = kubectl ]; then
    command -v kubectl >/dev/null 2>&1 || echo "note: kubectl not found; the kubectl tests will be skipped" >&2
    continue
  fi
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian postgresql package starts a default cluster on 5432; the agent runs its own.
if command -v pg_lsclusters >/dev/null 2>&1; then
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
  done
fi
# The Debian prometheus package (for promtool, tests/unit/test_monitoring.py) starts a server
# on 9090 where systemd runs; nothing here needs it.
if dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed"; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
