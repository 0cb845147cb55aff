#!/usr/bin/env bash
# Make sure the machine has what the Python packages cannot bring: Java 17+, Maven, PostgreSQL's
# server binaries. Installs missing ones with apt-get when possible (root, or sudo without a
# password); otherwise says exactly what to install. Idempotent: does nothing when all are present.
#
# Optional packages (monitoring of the local stack, and a browser for UI tests): Prometheus with
# promtool, Alertmanager, Pushgateway, postgres_exporter and Chromium. They are installed the same
# way when possible, but their absence or a failed install never fails this script: the stack starts
# without them and `txp stack status` shows them as "not installed".
set -euo pipefail

missing=()
have_java17() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  [ "${v:-0}" -ge 17 ]
}
have_pg() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
have_java17 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
have_pg || missing+=(postgresql)
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required (python3 is $(python3 -V 2>&1))" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

# optional: "binary package" pairs (Debian's names; the binaries are what the stack looks for)
optional=()
while read -r binary package; do
  command -v "$binary" >/dev/null 2>&1 || optional+=("$package")
done <<'PKGS'
prometheus prometheus
promtool prometheus
prometheus-alertmanager prometheus-alertmanager
prometheus-pushgateway prometheus-pushgateway
prometheus-postgres-exporter prometheus-postgres-exporter
chromium chromium
PKGS
# promtool comes with prometheus: list each package once
mapfile -t optional < <(printf '%s\n' "${optional[@]+"${optional[@]}"}" | awk 'NF && !seen[$0]++')

if [ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ]; then
  exit 0
fi
[ ${#missing[@]} -eq 0 ] || echo "system packages missing: ${missing[*]}" >&2
[ ${#optional[@]} -eq 0 ] || echo "optional system packages missing (monitoring, browser tests): ${optional[*]}" >&2

optional_hint() {
  echo "optional packages not installed: ${optional[*]} — the stack runs without them;" \
    "to add them: sudo apt-get install -y --no-install-recommends ${optional[*]}" >&2
}
if ! command -v apt-get >/dev/null 2>&1; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install them with your package manager (Java 17+ JDK, Maven, PostgreSQL server), then rerun" >&2
    exit 1
  fi
  echo "optional: install Prometheus, Alertmanager, Pushgateway, postgres_exporter and Chromium with your package manager" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    if [ ${#missing[@]} -gt 0 ]; then
      echo "run: sudo apt-get install -y ${missing[*]}   (then rerun this command)" >&2
      exit 1
    fi
    optional_hint
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps Debian's packages (postgresql, the prometheus-* exporters) from starting system
# services: the stack runs its own. Removed on exit, whatever happens.
cleanup() { $SUDO rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
if ! $SUDO apt-get update -qq; then
  [ ${#missing[@]} -eq 0 ] || exit 1
  optional_hint
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ${#optional[@]} -gt 0 ]; then
  # checked first, so a package this release does not have skips the optional step, not the script
  if $SUDO apt-get install --dry-run -qq --no-install-recommends "${optional[@]}" >/dev/null 2>&1 \
    && $SUDO apt-get install -y -qq --no-install-recommends "${optional[@]}"; then
    :
  else
    optional_hint
  fi
fi
