#!/usr/bin/env bash
# An aarch64 (64-bit ARM) CPython 3.11 with numpy, numba and llvmlite, run under qemu-user on
# any Linux machine: the engine's aarch64 (NEON) check (tests/engine/test_aarch64.py).
#   bash scripts/aarch64_python.sh --prepare        # download and unpack once (idempotent)
#   bash scripts/aarch64_python.sh ARGS...          # python3.11 ARGS under qemu-aarch64
# Nothing is installed system-wide: Debian bookworm's arm64 packages of python3.11 and the
# C libraries it loads are fetched with apt-get against a private package list (apt's state
# and cache in the cache folder, only arm64) and unpacked with dpkg -x into a sysroot; the
# manylinux aarch64 wheels of numpy, numba and llvmlite (the versions the x86 environment has:
# $PYTHON, default .venv/bin/python) are unpacked into a site-packages folder. The sources
# (src/) go on PYTHONPATH, so the engine runs from this checkout without torch.
# Needs qemu-user (qemu-aarch64), apt-get, dpkg and pip: scripts/setup.sh --devices.
# Download about 88 MB (12 MB of .deb, 76 MB of wheels), 330 MB unpacked, under
# $BNNPRUNE_AARCH64_CACHE (default .cache/aarch64-python, ignored by git).
# qemu gives correctness, not speed: numba compiles about 50x slower than natively there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${BNNPRUNE_AARCH64_CACHE:-$repo/.cache/aarch64-python}"
root="$cache/sysroot"
site="$cache/site-packages"
PY="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libffi8 libexpat1
      zlib1g libgcc-s1 libstdc++6 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6
      libtinfo6 libreadline8 libuuid1 libcrypt1 libnsl2 libtirpc3 libdb5.3 libgdbm6)

prepare() {
  local vers stamp
  vers="$("$PY" -c 'from importlib.metadata import version as v
print(" ".join(f"{p}=={v(p)}" for p in ("numpy", "numba", "llvmlite")))')"
  stamp="$cache/ready"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$vers" ]; then
    return 0
  fi
  command -v qemu-aarch64 >/dev/null || { echo "aarch64_python: qemu-aarch64 not found (Debian: apt-get install qemu-user)" >&2; exit 3; }
  echo "aarch64_python: preparing $cache ($vers)" >&2
  rm -rf "$root" "$site" "$cache/debs" "$cache/wheels"
  mkdir -p "$cache/apt/state/lists/partial" "$cache/apt/cache/archives/partial" "$cache/debs" \
    "$root" "$site"
  # a private apt: its own lists and cache, arm64 only, the system's sources and keys
  local apt=(-o "Dir::State=$cache/apt/state" -o "Dir::State::status=/dev/null"
             -o "Dir::Cache=$cache/apt/cache" -o "APT::Architecture=arm64"
             -o "APT::Architectures::=arm64" -o "Debug::NoLocking=1" -qq)
  apt-get "${apt[@]}" update
  (cd "$cache/debs" && apt-get "${apt[@]}" download "${DEBS[@]}")
  for d in "$cache"/debs/*.deb; do dpkg -x "$d" "$root"; done
  # shellcheck disable=SC2086  # $vers is a list of requirements
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --python-version 3.11 -d "$cache/wheels" $vers
  for w in "$cache"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$site"; done
  qemu-aarch64 -L "$root" "$root/usr/bin/python3.11" -c "import platform; assert platform.machine() == 'aarch64'"
  echo "$vers" >"$stamp"
}

prepare
if [ "${1:-}" = "--prepare" ]; then
  exit 0
fi
export PYTHONPATH="$site:$repo/src${PYTHONPATH:+:$PYTHONPATH}"
exec qemu-aarch64 -L "$root" "$root/usr/bin/python3.11" "$@"
