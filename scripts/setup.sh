#!/usr/bin/env bash
# Set up bnnprune in ./.venv: system data package (Fashion-MNIST), PyTorch, the package itself.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --test   # runtime + test tools (pytest, ruff, hypothesis, onnxruntime),
#                                  # the extras the tests cover (fpga: qonnx; lightning;
#                                  # tensorboard) and, for the C export's checks,
#                                  # gcc-aarch64-linux-gnu and qemu-user (ARM) and
#                                  # valgrind (instruction counts)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0: on this project's CPU
# machines pip takes the local CPU wheel instead of a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test,fpga,lightning,tensorboard]"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian package dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; pass --data-dir or --download later" >&2
  else
    echo "setup: run 'sudo apt-get install dataset-fashion-mnist' for the default data" >&2
  fi
fi

# --test: the C export is also checked on 64-bit ARM (cross-compiler + qemu user emulation)
# and its instructions per inference counted (valgrind's callgrind)
if [ -n "$extras" ] && ! { command -v aarch64-linux-gnu-gcc && command -v qemu-aarch64 \
    && command -v valgrind; } >/dev/null && command -v apt-get >/dev/null 2>&1; then
  c_tools="gcc-aarch64-linux-gnu qemu-user valgrind"
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages $c_tools" >&2
    # shellcheck disable=SC2086
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $c_tools) >/dev/null \
      || echo "setup: could not install $c_tools (ARM and instruction-count tests will skip)" >&2
  else
    echo "setup: run 'sudo apt-get install $c_tools' for the C export's tests" >&2
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() {  # quiet pip that still fails loudly
  local rc
  set +e
  .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location"
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
pip install -e ".${extras}"
.venv/bin/python -c "import bnnprune, torch, numba; print('setup: bnnprune ready, torch', torch.__version__)"
