#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine: system packages
# (tshark for evidence, pcscd + vpcd for the smartcard path, build deps of pyscard),
# the Python virtual environment, and the npm peers used for interoperability.
# Idempotent: each step is skipped when already satisfied. Needs no standard input.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(tshark pcscd vsmartcard-vpcd libpcsclite-dev swig tcpdump)
missing=()
# the interop peers (lwm2m-node-lib) need Node.js and npm; use Debian's where the machine has none
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages"
  # pip's output goes to a log that is shown only when the install fails
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e .; } > .venv/pip.log 2>&1; then
    cat .venv/pip.log; echo "setup: pip install failed (log above)" >&2; exit 1
  fi
  .venv/bin/python -c "import aiocoap, mbedtls, smartcard, cbor2, scapy, allure_pytest" # fail loudly
  touch "$stamp"
fi

if [ -f interop/package.json ] && command -v npm >/dev/null 2>&1; then
  if [ ! -d interop/node_modules ] || [ interop/package.json -nt interop/node_modules ]; then
    echo "setup: installing npm peers (interop/)"
    if ! (cd interop && npm ci --no-audit --no-fund --loglevel=error) > .venv/npm.log 2>&1; then
      cat .venv/npm.log; echo "setup: npm ci failed (log above)" >&2; exit 1
    fi
    touch interop/node_modules
  fi
fi
