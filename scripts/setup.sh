#!/usr/bin/env bash
# Set up bnnprune in ./.venv: system data package (Fashion-MNIST), PyTorch, the package itself.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --test   # runtime + test tools (pytest, ruff, hypothesis, onnxruntime)
#                                  # and the extras the tests cover (fpga: qonnx; lightning;
#                                  # tensorboard): enough for the quick tier, pytest -m "not slow"
#   bash scripts/setup.sh --devices  # Debian packages for the C export's slow-tier checks:
#                                  # gcc-aarch64-linux-gnu, qemu-user (aarch64),
#                                  # gcc-arm-none-eabi, libnewlib-arm-none-eabi,
#                                  # qemu-system-arm (Cortex-M) and valgrind (instruction counts),
#                                  # about 1 GB installed, so only the full suite asks for them;
#                                  # then an aarch64 Python for the engine's check under qemu
#                                  # (scripts/aarch64_python.sh: 88 MB download, in .cache/)
#   bash scripts/setup.sh --fpga   # also FINN's compiler front end (finn-plus) in ./.venv-finn,
#                                  # its own environment: FINN pins numpy, onnx, onnxruntime,
#                                  # protobuf and qonnx to other versions than ours (docs/fpga.md)
# The flags combine (CI: --fpga --devices, then --test).
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0: on this project's CPU
# machines pip takes the local CPU wheel instead of a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
fpga=""
devices=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test,fpga,lightning,tensorboard]" ;;
    --fpga) fpga=1 ;;
    --devices) devices=1 ;;
    *) echo "setup: unknown option $arg (known: --test, --devices, --fpga)" >&2; exit 2 ;;
  esac
done

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian package dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; pass --data-dir or --download later" >&2
  else
    echo "setup: run 'sudo apt-get install dataset-fashion-mnist' for the default data" >&2
  fi
fi

# --devices: the C export is also checked on 64-bit ARM (cross-compiler + qemu user emulation)
# and on Cortex-M microcontrollers (bare-metal toolchain + qemu's mps2 boards); its
# instructions per inference are counted by valgrind's callgrind (tests marked slow)
if [ -n "$devices" ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  { command -v aarch64-linux-gnu-gcc && command -v qemu-aarch64; } >/dev/null \
    || need="gcc-aarch64-linux-gnu qemu-user"
  { command -v arm-none-eabi-gcc && command -v qemu-system-arm \
      && [ -d /usr/lib/arm-none-eabi/newlib ]; } >/dev/null \
    || need="$need gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
  command -v valgrind >/dev/null || need="$need valgrind"
  if [ -n "$need" ] && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages $need" >&2
    # shellcheck disable=SC2086  # $need is a list of package names
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/dev/null \
      || echo "setup: could not install $need (the C export's device and instruction-count tests will skip, or fail with CI=1)" >&2
  elif [ -n "$need" ]; then
    echo "setup: run 'sudo apt-get install$need' for the C export's tests" >&2
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
venv_pip() {  # venv_pip VENV ARGS...: quiet pip of that environment that still fails loudly
  local rc venv="$1"
  shift
  set +e
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location"
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  venv_pip .venv install "${TORCH_SPEC:-torch==2.13.0}"
fi
venv_pip .venv install -e ".${extras}"
.venv/bin/python -c "import bnnprune, torch, numba; print('setup: bnnprune ready, torch', torch.__version__)"

# --devices: the engine's .bnn files are also checked on aarch64, under an aarch64 CPython with
# numba run by qemu-user (tests/engine/test_aarch64.py); fetched once into .cache/
if [ -n "$devices" ]; then
  PYTHON=.venv/bin/python bash scripts/aarch64_python.sh --prepare \
    || echo "setup: could not prepare the aarch64 Python (tests/engine/test_aarch64.py will skip, or fail with CI=1)" >&2
fi

# --fpga: FINN in .venv-finn. CPU torch first (FINN's custom ops import torch), then finn-plus's
# requirements from scripts/finn-requirements.txt holding torch at the installed CPU build, then
# finn-plus without its dependencies (a plain `pip install finn-plus` swaps in a CUDA torch).
if [ -n "$fpga" ]; then
  [ -x .venv-finn/bin/python ] || "$PY" -m venv .venv-finn
  if ! .venv-finn/bin/python -c "import torch" 2>/dev/null; then
    venv_pip .venv-finn install "${TORCH_SPEC:-torch==2.13.0}"
  fi
  pins="$(mktemp)"
  .venv-finn/bin/python -c \
    "from importlib.metadata import version; print('torch==' + version('torch'))" >"$pins"
  venv_pip .venv-finn install -c "$pins" -r scripts/finn-requirements.txt
  rm -f "$pins"
  # last, so pip does not report finn-plus's deliberately missing brevitas, mip and cmake
  venv_pip .venv-finn install --no-deps finn-plus==1.6.1
  .venv-finn/bin/python -c "import finn.custom_op.fpgadataflow, torch; print('setup: FINN ready in .venv-finn, torch', torch.__version__)"
fi
