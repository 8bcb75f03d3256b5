#!/usr/bin/env bash
# Installs the Debian packages peftd builds against, only those that are missing.
# Used by `make deps` (and so by `make run` / `make test`); safe to run repeatedly.
set -euo pipefail

# pkg-config module -> Debian package that provides it
declare -A PKG=(
  [libmicrohttpd]=libmicrohttpd-dev
  [libcjson]=libcjson-dev
  [libuv]=libuv1-dev
  [lmdb]=liblmdb-dev
  [openblas]=libopenblas-dev
  [libpcre2-8]=libpcre2-dev
  [libutf8proc]=libutf8proc-dev
  [libcrypto]=libssl-dev
  [libcurl]=libcurl4-openssl-dev   # peftctl, the load generator and the follower (store.follow)
)

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
for mod in "${!PKG[@]}"; do
  if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists "$mod"; then
    missing+=("${PKG[$mod]}")
  fi
done
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# `make test-cluster` puts HAProxy in front of its replicas (PEFTD_DEPS_HAPROXY=1)
if [ "${PEFTD_DEPS_HAPROXY:-}" = 1 ] && ! command -v haproxy >/dev/null 2>&1; then missing+=(haproxy); fi
# `make test-gpu-dryrun` generates its tiny model with clients/gen_random_llama.py (numpy)
# promtool (Debian's prometheus package) for the metrics exposition checks (CI sets it).
if [ "${PEFTD_DEPS_PROMTOOL:-}" = 1 ] && ! command -v promtool >/dev/null 2>&1; then missing+=(prometheus); fi
if [ "${PEFTD_DEPS_NUMPY:-}" = 1 ] && ! python3 -c 'import numpy' >/dev/null 2>&1; then missing+=(python3-numpy); fi
# `make venv` (the test virtualenv) needs venv + ensurepip: Debian splits them out.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install_deps: installing missing packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
