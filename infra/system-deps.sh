#!/usr/bin/env bash
# Make sure the machine has what the Python packages cannot bring: Java 17+, Maven, PostgreSQL's
# server binaries. Installs missing ones with apt-get when possible (root, or sudo without a
# password); otherwise says exactly what to install. Idempotent: does nothing when all are present.
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

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "system packages missing: ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install them with your package manager (Java 17+ JDK, Maven, PostgreSQL server), then rerun" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "run: sudo apt-get install -y ${missing[*]}   (then rerun this command)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps Debian's postgresql package from starting a system cluster: the stack runs its own
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
$SUDO rm -f /usr/sbin/policy-rc.d
