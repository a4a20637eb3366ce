"""The engine on 64-bit ARM: ``.bnn`` files exported here (x86) run under an aarch64 CPython
with numba under qemu-user (scripts/aarch64_python.sh), on both counting schemes (NEON's
byte counts, the flushes of windows longer than BYTE_WORDS included), and give the x86
engine's logits bit for bit. Also: the loading and running path needs no torch, and the
target's architecture decides the instruction set (NEON on aarch64, where LLVM's host feature
map may be empty).

qemu gives correctness only: numba compiles the kernels there about 50x slower than natively
(about 9 minutes on a 2-core machine, cached afterwards under the script's cache folder).
Missing tools skip here and fail in CI (CI=1), as the C export's aarch64 check does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from bnnprune.engine import compile_model, load, save
from bnnprune.engine.kernels import bconv
from bnnprune.engine.kernels import intrinsics as I
from bnnprune.engine.program import OP_KINDS
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear

from .test_cexport import MODELS, _need, _prepare

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "aarch64_python.sh"
# the C export's test nets (every op kind between them, direct and patch-matrix GEMMs; `small`
# and `edge` have windows long enough for carry-save counting) and a narrow NIN
ARM_MODELS = {name: MODELS[name] for name in ("small", "small_pruned", "edge", "pack",
                                              "residual", "cat", "act")}


class LongNet(nn.Module):
    """Windows longer than BYTE_WORDS (31): a direct 3x3 bconv over 448 channels (63 words:
    the byte counts flushed twice within the window, one word after), a dense (patch matrix)
    5x5 bconv over 80 channels (32 words) and a binary linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(448)
        self.b1, self.bn1 = BinaryConv2d(448, 80, 3), nn.BatchNorm2d(80)
        self.b2, self.bn2 = BinaryConv2d(80, 40, 5, padding=2), nn.BatchNorm2d(40)
        self.fc = BinaryLinear(40 * 5 * 5, 10)

    def forward(self, x):
        z = self.bn1(self.b1(self.bn0(x)))
        return self.fc(nn.functional.hardtanh(nn.functional.hardtanh(self.bn2(self.b2(z)))
                                              ).flatten(1))


ARM_MODELS["nin"] = (lambda: build_model("nin", width=0.25), (3, 32, 32), 0)
ARM_MODELS["long"] = (LongNet, (448, 7, 7), 0)

# run under qemu: every .bnn of a folder on a counting scheme (forced per load; byte counts
# as BNNPRUNE_BYTE_COUNTS gives them, read at import), the outputs saved next to it, the
# target as the engine sees it printed as JSON
RUNNER = """
import json, os, sys
from pathlib import Path
import numpy as np
from bnnprune.engine import load
from bnnprune.engine.kernels import intrinsics as I
folder, scheme, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
info = {"arch": I.target_arch(), "isa": I.instruction_set(), "default": I.counting_scheme(),
        "torch": "torch" in sys.modules, "byte_min_words": I.BYTE_MIN_WORDS, "ran": []}
os.environ[I.SCHEME_ENV] = scheme
for f in sorted(folder.glob("*.bnn")):
    y = load(f)(np.load(folder / f"{f.stem}.x.npy"), threads=1)
    np.save(folder / f"{f.stem}.{tag}.npy", y)
    info["ran"].append([f.stem, I.counting_scheme()])
print(json.dumps(info))
"""


@pytest.mark.slow  # an aarch64 Python under qemu-aarch64 (scripts/setup.sh --devices)
def test_bnn_files_run_bit_exact_on_aarch64_under_qemu(tmp_path, monkeypatch):
    for tool in ("qemu-aarch64", "apt-get", "dpkg"):
        _need(tool, "scripts/setup.sh --devices: qemu-user; apt-get, dpkg",
              "the aarch64 engine check")
    env = {**os.environ, "PYTHON": sys.executable,
           "NUMBA_CACHE_DIR": str(Path(os.environ.get(
               "BNNPRUNE_AARCH64_CACHE", REPO / ".cache" / "aarch64-python")) / "numba")}
    env.pop(I.SCHEME_ENV, None)
    env.pop(I.BYTE_ENV, None)
    r = subprocess.run(["bash", str(SCRIPT), "--prepare"], env=env, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:  # e.g. no access to Debian's archive or PyPI
        msg = f"scripts/aarch64_python.sh --prepare failed: {r.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    refs, kinds = {}, set()
    csa_windows, windows = [], set()  # window sizes counted carry-save, and all (the spy)
    uses_csa = bconv.uses_csa

    def spy(scheme, window_words, kstride):
        used = uses_csa(scheme, window_words, kstride)
        csa_windows.extend([window_words] if used else [])
        windows.add((window_words, kstride == 1))
        return used

    monkeypatch.setattr(bconv, "uses_csa", spy)
    for name, (factory, shape, seed) in ARM_MODELS.items():
        program = compile_model(_prepare(factory, seed), shape)
        save(program, tmp_path / f"{name}.bnn")
        kinds |= {op.kind for op in program.ops}
        x = np.random.default_rng(5).standard_normal((6, *shape)).astype(np.float32)
        np.save(tmp_path / f"{name}.x.npy", x)
        refs[name] = program(x, threads=1)
        monkeypatch.setenv(I.SCHEME_ENV, "csa")  # the x86 engine agrees with itself on both
        got = load(tmp_path / f"{name}.bnn")(x, threads=1)
        monkeypatch.delenv(I.SCHEME_ENV)
        assert np.array_equal(got.view(np.uint32), refs[name].view(np.uint32)), name
    assert kinds == set(OP_KINDS)
    # the csa variant's carry-save and short-window branches are exercised, not only per word
    assert any(n >= I.CSA_MIN_WORDS for n in csa_windows)
    assert any(n in I.SHORT_WORDS for n in csa_windows)
    # and the byte counts' flush within a window (direct and dense), the shortest windows
    # counted in bytes (NEON: every window), 1 and 3 words
    assert any(n > 2 * I.BYTE_WORDS and n % I.BYTE_WORDS and direct for n, direct in windows)
    assert any(n > I.BYTE_WORDS and not direct for n, direct in windows)
    shortest = I.byte_min_words(frozenset({"neon"}))
    assert {1, 3, shortest} <= {n for n, _ in windows}
    for scheme in I.SCHEMES:  # each with NEON's own byte counts (BYTE_ENV unset above)
        r = subprocess.run(["bash", str(SCRIPT), "-c", RUNNER, str(tmp_path), scheme, scheme],
                           env=env, capture_output=True, text=True, timeout=3600)
        assert r.returncode == 0, r.stderr[-4000:]
        info = json.loads(r.stdout.strip().splitlines()[-1])
        assert info["arch"] == "aarch64" and info["isa"] == "neon"
        assert info["default"] == "popcount"  # NEON's own scheme (the runner forces one)
        # NEON counts in bytes (cnt + a bytewise add per word)
        assert info["byte_min_words"] == shortest
        assert not info["torch"]
        assert sorted(info["ran"]) == sorted([n, scheme] for n in ARM_MODELS)
        for name, ref in refs.items():
            got = np.load(tmp_path / f"{name}.{scheme}.npy")
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (name, scheme)


def test_instruction_set_follows_the_target_architecture(monkeypatch):
    assert I.is_aarch64("aarch64") and I.is_aarch64("arm64") and not I.is_aarch64("x86_64")
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    monkeypatch.delenv(I.SCHEME_ENV, raising=False)
    # an aarch64 Python under qemu-user: LLVM's host feature map is empty there
    monkeypatch.setattr(I, "_host_features", lambda: frozenset())
    monkeypatch.setattr(I, "target_arch", lambda: "aarch64")
    assert I.instruction_set() == "neon"
    monkeypatch.delenv(I.BYTE_ENV, raising=False)
    assert I.counting_scheme() == "popcount"
    assert I.byte_counts() and I.byte_sum_isa() == "neon"
    assert I.byte_min_words() == I.byte_min_words(frozenset({"neon"}))
    monkeypatch.setattr(I, "target_arch", lambda: "x86_64")
    assert I.instruction_set() == "generic"


def test_loading_and_running_a_bnn_file_needs_no_torch(tmp_path):
    factory, shape, seed = MODELS["small"]
    program = compile_model(_prepare(factory, seed), shape)
    save(program, tmp_path / "m.bnn")
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails
            "import numpy as np\nfrom bnnprune.engine import load\n"
            f"y = load({str(tmp_path / 'm.bnn')!r})(np.load({str(tmp_path / 'x.npy')!r}))\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, y)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "y.npy"), program(x))
