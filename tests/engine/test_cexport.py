"""C export vs the engine: the generated C99, compiled with the system compiler (and for
64-bit ARM under qemu), gives the engine's logits bit for bit on random models covering every
op kind (concatenations and PReLU/RPReLU as in the engine's tests), the zoo's `small` and
`reactnet` models, a pruned copy of `small` and real Fashion-MNIST images, on every kernel
path (portable, AVX2, NEON; AVX-512 compiled).

Each model is exported and compiled once per module (fixtures); each run feeds a whole batch
of images to one process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.deploy import cexport
from bnnprune.deploy.cexport import (
    C_OP_KINDS,
    FILES,
    c_footprint,
    export_c,
    format_footprint,
    plan_arena,
)
from bnnprune.deploy.cexport import _Buffer as Buffer
from bnnprune.engine import EngineError, compile_model
from bnnprune.engine.kernels import intrinsics
from bnnprune.engine.program import OP_KINDS
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear
from bnnprune.prune import apply_plan, compute_sensitivity, make_plan

from .conftest import dyadic_fp_weights, randomize_bn
from .test_exact import OddNet, ResidualNet
from .test_fashion_mnist import ROOT as FMNIST
from .test_fashion_mnist import _images
from .test_generic import ActNet, CatNet, prepared

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
SOURCES = ["model.c", "bnn_kernels.c", "main.c"]
ARM_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


class EdgeNet(nn.Module):
    """Every C op kind: fp stem, sign, direct 5x5 stride-2 bconv with -1 padding (float mode),
    float max-pool, residual add, ReLU, standalone BatchNorm, packed average pool, dense (patch
    matrix) 3x3 bconv with -1 padding, bit max-pool, flatten, binary linear with BatchNorm1d,
    Hardtanh, fp linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 21, 3, padding=1), nn.BatchNorm2d(21)
        self.b1 = BinaryConv2d(21, 21, 5, stride=2, padding=2, pad_value=-1.0, scale=True)
        self.bn1 = nn.BatchNorm2d(21)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.bn2 = nn.BatchNorm2d(21)
        self.avg = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        self.b2 = BinaryConv2d(21, 45, 3, padding=1, pad_value=-1.0)
        self.bn3 = nn.BatchNorm2d(45)
        self.mpool = nn.MaxPool2d(2)
        self.fc1, self.bnf = BinaryLinear(45 * 2 * 2, 33, bias=True), nn.BatchNorm1d(33)
        self.head = nn.Linear(33, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        y = self.bn1(self.b1(x)) + self.pool(x)
        z = self.avg(self.bn2(torch.relu(y)))
        z = self.mpool(nn.functional.hardtanh(self.bn3(self.b2(z))))
        z = self.bnf(self.fc1(torch.flatten(z, 1)))
        return self.head(nn.functional.hardtanh(z))


class PackNet(nn.Module):
    """A BatchNorm on the input packed to bits, a whole-window 3x3 bconv read in place (64
    channels: one word per pixel, no patch) and a binary linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(64)
        self.b1, self.bn1 = BinaryConv2d(64, 64, 3), nn.BatchNorm2d(64)
        self.fc = BinaryLinear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn1(self.b1(self.bn0(x))), 1))


class WindowNet(nn.Module):
    """Binary convs whose windows (64-bit words per pixel and channel) span the counting
    regimes of the byte-counting paths (bnn_conv.h, BNN_BYTE_COUNTS): 2, 3 and 7 words
    (straight line: no full adder, one, two and a word), 9, 16 and 18 (bytes, one run), 31
    (BNN_BYTE_WORDS: exactly one run), 32 (a patch window flushed after 31 words, 1 left), 36
    (a direct window flushed in its third row), over 62 (flushed twice); odd output channel
    counts, a binary linear head in float mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 220, 3, padding=1), nn.BatchNorm2d(220)
        chans = [(220, 221, 3), (221, 400, 3), (400, 150, 1), (150, 70, 5), (70, 256, 1),
                 (256, 192, 3), (192, 99, 1), (99, 64, 3), (64, 33, 3)]
        self.convs = nn.ModuleList(BinaryConv2d(a, b, k, padding=k // 2) for a, b, k in chans)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b, _ in chans)
        self.fc = BinaryLinear(33 * 4 * 4, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = bn(conv(x))
        return self.fc(torch.flatten(x, 1))


class SaturateNet(nn.Module):
    """Byte counts at their bound: a 1x1 bconv over 33 words whose first 32 are all -1 (the
    stem's channels 0..2047 are constant) and whose first output channel's weights are all
    +1, so that each byte of those XOR words counts 8: 32 of them summed in one byte run would
    wrap (256), BNN_BYTE_WORDS = 31 do not. The bconv's counts reach the logits (float
    mode); its last word varies with the image."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2112, 1)
        self.conv, self.bn = BinaryConv2d(2112, 17, 1), nn.BatchNorm2d(17)
        self.head = nn.Linear(17 * 2 * 2, 5)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.stem.weight.zero_()
            self.stem.weight[2048:] = torch.randint(-16, 17, (64, 1, 1, 1), generator=g) / 16
            self.stem.bias.fill_(-1.0)
            self.conv.weight[0] = 1.0
            self.conv.weight[1] = -1.0
            self.head.weight.copy_(torch.randint(-16, 17, (5, 68), generator=g) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(self.stem(x)))
        return self.head(torch.flatten(x, 1))


def _prepare(factory, seed: int | None) -> nn.Module:
    """Random BatchNorm statistics (seed None: the factory calibrates the model itself)."""
    torch.manual_seed(seed or 0)
    if seed is None:
        return factory().eval()
    return dyadic_fp_weights(randomize_bn(factory(), seed=seed), seed=seed).eval()


def _pruned_small() -> nn.Module:
    """`small` pruned by the library (target policy, WFF criterion, synthetic flip counts)."""
    torch.manual_seed(1)
    model = build_model("small")
    g = torch.Generator().manual_seed(0)
    counts = {}
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d | BinaryLinear):
            rate = torch.rand(m.weight.shape[0], generator=g).view(-1, 1, 1, 1) * 0.4
            flips = torch.bernoulli(rate.expand_as(m.weight).contiguous(), generator=g)
            counts[name] = (flips * 20).to(torch.int32)
    sens = compute_sensitivity(counts, model, steps=20)
    plan = make_plan(model, (1, 28, 28), "target", sensitivity=sens, target=0.5)
    return apply_plan(model, plan, "wff", sens).model


# name: (model factory, input shape, seed of the random BatchNorm statistics or None)
MODELS = {
    "cat": (lambda: prepared(CatNet(), (3, 9, 9)), (3, 9, 9), None),
    "act": (lambda: prepared(ActNet(), (3, 10, 10), seed=1), (3, 10, 10), None),
    "reactnet": (lambda: prepared(build_model("reactnet", width=0.125), (3, 32, 32)),
                 (3, 32, 32), None),
    "edge": (EdgeNet, (2, 13, 13), 0),
    "pack": (PackNet, (64, 3, 3), 0),
    "windows": (WindowNet, (3, 4, 4), 0),
    "saturate": (SaturateNet, (1, 2, 2), None),
    "odd": (OddNet, (3, 19, 19), 5),  # its 1-channel bottleneck is constant for most seeds
    "residual": (ResidualNet, (1, 15, 15), 0),
    "small": (lambda: build_model("small"), (1, 28, 28), 0),
    "small_pruned": (_pruned_small, (1, 28, 28), 0),
}


def _need(tool: str, install: str = "Debian: apt-get install gcc-aarch64-linux-gnu qemu-user",
          check: str = "the ARM check") -> str:
    """The tool's path; skip without it (a user's machine), fail in CI (it must be there)."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} not found ({install})"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run {check}: {msg}")
        pytest.skip(msg)
    return path


def _compile(folder: Path, exe: str, cc: str = "cc", flags: tuple[str, ...] = ()) -> Path:
    r = subprocess.run([cc, *CFLAGS, *flags, *SOURCES, "-lm", "-o", exe], cwd=folder,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return folder / exe


def _run(cmd: list[str], x: np.ndarray, folder: Path) -> np.ndarray:
    """Logits printed by the host program for the images ``x`` (N, C, H, W)."""
    data = folder / "images.f32"
    np.ascontiguousarray(x, np.float32).tofile(data)
    r = subprocess.run([*cmd, str(data)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [[float(v) for v in line.split()] for line in r.stdout.splitlines()]
    return np.array(rows, np.float32)


class Export:
    """A model, its program, its C export folder and host executable."""

    def __init__(self, name: str, folder: Path) -> None:
        factory, self.shape, seed = MODELS[name]
        self.model = _prepare(factory, seed)
        self.program = compile_model(self.model, self.shape)
        self.folder = folder
        self.footprint = export_c(self.program, folder)
        self.exe = _compile(folder, "model")

    def inputs(self, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((n, *self.shape)).astype(np.float32)

    def engine(self, x: np.ndarray) -> np.ndarray:
        return self.program(x, threads=1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Export]:
    root = tmp_path_factory.mktemp("cexport")
    return {name: Export(name, root / name) for name in MODELS}


def _assert_same(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got, ref), f"max |diff| {np.abs(got - ref).max()}"


def test_test_models_cover_every_c_op(exports):
    assert set(C_OP_KINDS) == set(OP_KINDS)  # every op the engine compiles
    kinds = {op.kind for e in exports.values() for op in e.program.ops}
    assert kinds == set(C_OP_KINDS)
    packed = {op.kind for e in exports.values() for op in e.program.ops if op.attrs.get("pack")}
    assert {"fconv", "avgpool", "affine"} <= packed
    words = {op.attrs["cin"] % 64 for e in exports.values() for op in e.program.ops
             if op.kind == "bconv"}
    assert 0 in words and len(words) > 1  # whole words and odd channel counts


def _window_words(folder: Path) -> list[int]:
    """Words per window of each binary conv in the export (kh * seg of its bnn_win_t)."""
    layers = (folder / "model.c").read_text().split("static BNN_LAYER void ")[1:]
    wins = [re.search(r"bnn_win_t win = \{\w+, \w+, (\d+), (\d+), \d\};", fn)
            for fn in layers if "bnn_bconv_" in fn]
    return [int(w[1]) * int(w[2]) for w in wins]


def test_window_model_covers_the_byte_counting_regimes(exports):
    """The windows model has windows below 8 words, from 8 to 30, of exactly 31 (one run of
    byte counts), 32 (flushed once, 1 word left) and over 62 (flushed twice)."""
    words = set(_window_words(exports["windows"].folder))
    assert {2, 3, 7} <= words and {n for n in words if 8 <= n < 31}
    assert {31, 32} <= words and max(words) > 62, sorted(words)
    assert _window_words(exports["saturate"].folder) == [33]


def test_c_byte_count_constants_are_the_engines():
    """bnn_conv.h's byte-count constants are the engine's: the run of byte counts summed
    bytewise (31 words, the most that cannot overflow a byte) and AVX2's shortest window
    counted in a loop (shorter ones straight line)."""
    header = (Path(cexport.__file__).parent / "c" / "bnn_conv.h").read_text()
    defines = dict(re.findall(r"^#define (BNN_\w+) (\d+)$", header, flags=re.M))
    assert int(defines["BNN_BYTE_WORDS"]) == intrinsics.BYTE_WORDS
    assert int(defines["BNN_SHORT_WORDS"]) == intrinsics.AVX2_BYTE_MIN_WORDS
    assert intrinsics.SHORT_WORDS == range(1, int(defines["BNN_SHORT_WORDS"]))


@pytest.mark.parametrize("name", list(MODELS))
def test_host_build_equals_engine(exports, name):
    e = exports[name]
    x = e.inputs(24)
    got = _run([str(e.exe)], x, e.folder)
    ref = e.engine(x)
    assert len(np.unique(ref, axis=0)) > 1  # the random model is not constant
    _assert_same(got, ref)


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="no Fashion-MNIST (Debian package dataset-fashion-mnist)")
@pytest.mark.parametrize("name", ["small", "small_pruned"])
def test_real_fashion_mnist_images(exports, name):
    e = exports[name]
    x = (_images(300) - 0.2860) / 0.3530
    got = _run([str(e.exe)], x, e.folder)
    ref = e.engine(x)
    with torch.no_grad():
        torch_ref = e.model(torch.from_numpy(x)).numpy()
    assert len(np.unique(ref.argmax(1))) > 1
    _assert_same(got, ref)
    assert (got.argmax(1) == torch_ref.argmax(1)).mean() >= 0.99


def _has_cpu(flag: str) -> bool:
    return flag in Path("/proc/cpuinfo").read_text().split()


# x86-64 builds: (flags, the kernel path bnn_conv.h must take, CPU flag needed to run it)
X86_PATHS = [
    (("-DBNN_NO_SIMD", "-O3", "-march=x86-64-v3"), "PORTABLE", "avx2"),
    (("-O3", "-march=x86-64-v2"), "PORTABLE", "popcnt"),  # popcnt instruction, no FMA
    (("-DBNN_PORTABLE_POPCOUNT",), "PORTABLE", None),  # the C99 bit count
    (("-DBNN_POPCOUNT32",), "PORTABLE", None),  # Cortex-M's popcount, checked on the host
    (("-DBNN_CSA32",), "CSA32", None),  # Cortex-M's carry-save path, checked on the host
    (("-DBNN_CSA32", "-O3", "-march=x86-64-v3"), "CSA32", "avx2"),  # ... before AVX2, FMA
    (("-DBNN_SOFT_FMA",), "PORTABLE", None),  # the fmaf of cores without FMA (M0+, M3)
    (("-mavx2",), "AVX2", "avx2"),  # binary layers on AVX2, float layers portable (no FMA)
    (("-O3", "-march=x86-64-v3"), "AVX2", "avx2"),  # the documented x86-64 build
    (("-O3", "-march=x86-64-v4", "-mavx512vpopcntdq"), "AVX512", "avx512_vpopcntdq"),
]


def _path_of(folder: Path, flags: tuple[str, ...], cc: str = "cc") -> str:
    """The BNN_PATH_* that bnn_conv.h selects under ``flags`` (from the preprocessor)."""
    r = subprocess.run([cc, "-std=c99", *flags, "-dM", "-E", "bnn_conv.h"], cwd=folder,
                       capture_output=True, text=True, check=True)
    paths = re.findall(r"#define BNN_PATH_(\w+) 1", r.stdout)
    assert len(paths) == 1, paths
    return paths[0]


@pytest.mark.parametrize("flags,path,cpu", X86_PATHS)
@pytest.mark.parametrize("name", ["edge", "cat", "small_pruned", "windows", "saturate"])
def test_kernel_paths_equal_engine(exports, name, flags, path, cpu):
    """Each path compiles (AVX-512 everywhere) and, where this CPU runs it, is exact."""
    e = exports[name]
    assert _path_of(e.folder, flags) == path
    if cpu is not None and not _has_cpu(cpu):
        r = subprocess.run(["cc", *CFLAGS, *flags, "-c", "model.c", "-o", "model_path.o"],
                           cwd=e.folder, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        pytest.skip(f"compiled only: this CPU has no {cpu}")
    exe = _compile(e.folder, "model_path", flags=flags)
    x = e.inputs(16, seed=3)
    _assert_same(_run([str(exe)], x, e.folder), e.engine(x))


def test_no_fma_is_close(exports):
    """BNN_NO_FMA: a*b+c instead of fmaf, the last bits of float layers may differ."""
    e = exports["edge"]
    exe = _compile(e.folder, "model_nofma", flags=("-DBNN_NO_FMA", "-O3", "-march=native"))
    x = e.inputs(16, seed=3)
    np.testing.assert_allclose(_run([str(exe)], x, e.folder), e.engine(x), rtol=1e-3, atol=1e-3)


def _undefined(folder: Path, flags: tuple[str, ...], cc: str = "cc") -> set[str]:
    """Symbols model.c and bnn_kernels.c call outside themselves under ``flags``."""
    names: set[str] = set()
    for src in ("model.c", "bnn_kernels.c"):
        obj = f"{src}.sym.o"
        subprocess.run([cc, *CFLAGS, *flags, "-c", src, "-o", obj], cwd=folder, check=True)
        nm = cc.replace("gcc", "nm") if cc != "cc" else "nm"
        out = subprocess.run([nm, "-u", obj], cwd=folder, capture_output=True, text=True,
                             check=True).stdout
        names |= {line.split()[-1] for line in out.splitlines() if line.strip()}
    return names


@pytest.mark.parametrize("flags,fma_hw", [
    (("-O2",), False),
    (("-O3", "-march=x86-64-v2"), False),
    (("-O2", "-march=x86-64-v3"), True),
    (("-O3", "-march=x86-64-v3"), True),
])
def test_no_library_calls_in_hot_loops(exports, flags, fma_hw):
    """No libgcc popcount in any build; no libm fmaf where the CPU has fused multiply-add."""
    names = _undefined(exports["edge"].folder, flags)
    assert not {n for n in names if "popcount" in n}, names
    assert ("fmaf" in names) == (not fma_hw), names


@pytest.mark.slow  # under qemu-aarch64 (scripts/setup.sh --devices)
@pytest.mark.parametrize("name", ["edge", "pack", "cat", "act", "small_pruned", "windows",
                                  "saturate"])
def test_aarch64_under_qemu(exports, name):
    cc, qemu = _need(ARM_CC), _need(QEMU)
    e = exports[name]
    assert _path_of(e.folder, (), cc=cc) == "NEON"
    exe = _compile(e.folder, "model_arm64", cc=cc, flags=("-static",))
    x = e.inputs(12, seed=5)
    _assert_same(_run([qemu, str(exe)], x, e.folder), e.engine(x))
    assert not {n for n in _undefined(e.folder, ("-O3",), cc=cc) if "popcount" in n or
                n == "fmaf"}
    portable = _compile(e.folder, "model_arm64_portable", cc=cc, flags=("-static",
                                                                        "-DBNN_NO_SIMD"))
    _assert_same(_run([qemu, str(portable)], x, e.folder), e.engine(x))


def test_files_header_and_footprint(exports):
    e = exports["small"]
    assert sorted(p.name for p in e.folder.iterdir() if p.suffix in (".c", ".h")) == sorted(FILES)
    header = (e.folder / "model.h").read_text()
    defines = dict(re.findall(r"#define (MODEL_\w+) (\d+)", header))
    fp = e.footprint
    assert int(defines["MODEL_SCRATCH_BYTES"]) == fp.ram_bytes
    assert int(defines["MODEL_FLASH_BYTES"]) == fp.flash_bytes
    assert int(defines["MODEL_INPUT_SIZE"]) == 28 * 28 and int(defines["MODEL_OUTPUT_SIZE"]) == 10
    assert c_footprint(e.program) == fp
    src = (e.folder / "model.c").read_text()
    assert "malloc" not in src + (e.folder / "bnn_kernels.c").read_text()
    # flash: the const data the compiler actually emits (read-only sections of model.o)
    obj = e.folder / "model.o"
    subprocess.run(["cc", *CFLAGS, "-c", "model.c", "-o", str(obj)], cwd=e.folder, check=True)
    size = shutil.which("size")
    if size:
        out = subprocess.run([size, "-A", str(obj)], capture_output=True, text=True).stdout
        ro = sum(int(n) for s, n in re.findall(r"^(\.rodata\S*|\.data\.rel\.ro\S*)\s+(\d+)",
                                                out, re.M))
        assert fp.flash_bytes <= ro <= fp.flash_bytes + 2048, out
    # RAM: every run above used exactly MODEL_SCRATCH_BYTES with guard words after it; the
    # arena is shared between values, so it is below the sum of all buffers
    values = sum(v.h * v.w * (v.c * 4 if v.kind == "float" else 8 * -(-v.c // 64))
                 for v in e.program.values[1:])
    assert 0 < fp.ram_bytes < values


def test_pruned_footprint_is_smaller(exports):
    base, pruned = exports["small"].footprint, exports["small_pruned"].footprint
    assert pruned.flash_bytes < base.flash_bytes and pruned.ram_bytes <= base.ram_bytes
    table = format_footprint(pruned, base)
    assert table[1].split()[0] == "unpruned" and f"{base.flash_bytes:,}" in table[1]
    assert f"{pruned.flash_bytes:,}" in table[2] and table[3].split()[0] == "ratio"


def test_model_run_rejects_bad_pointers(exports):
    e = exports["pack"]
    (e.folder / "bad.c").write_text(
        '#include <stdio.h>\n#include "model.h"\n'
        "static uint64_t arena[MODEL_SCRATCH_BYTES / 8 + 2];\n"
        "static float in[MODEL_INPUT_SIZE], out[MODEL_OUTPUT_SIZE];\n"
        "int main(void) {\n"
        "    printf(\"%d %d %d %d\\n\", model_run(in, out, (char *)arena + 4),\n"
        "           model_run(NULL, out, arena), model_run(in, NULL, arena),\n"
        "           model_run(in, out, arena));\n"
        "    return 0;\n}\n")
    r = subprocess.run(["cc", *CFLAGS, "bad.c", "model.c", "bnn_kernels.c", "-lm", "-o", "bad"],
                       cwd=e.folder, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(e.folder / "bad")], capture_output=True, text=True).stdout
    assert out.split() == ["-1", "-1", "-1", "0"]


def test_host_program_rejects_a_truncated_image(exports):
    e = exports["pack"]
    data = e.folder / "short.f32"
    np.zeros(64 * 9 + 5, np.float32).tofile(data)
    r = subprocess.run([str(e.exe), str(data)], capture_output=True, text=True)
    assert r.returncode == 1 and "inside an image" in r.stderr
    assert len(r.stdout.splitlines()) == 1  # the whole first image was still run


def test_unsupported_op_names_the_op(exports):
    program = exports["pack"].program
    op = program.ops[-1]
    kind = op.kind
    op.kind = "gelu"  # an op kind a later engine might add before the C export does
    try:
        with pytest.raises(EngineError, match=rf"{re.escape(op.name)}.*gelu.*cannot express"):
            c_footprint(program)
    finally:
        op.kind = kind


def test_arena_never_overlaps_live_buffers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        bufs = []
        for _ in range(int(rng.integers(1, 25))):
            a, b = sorted(int(v) for v in rng.integers(-1, 12, 2))
            bufs.append(Buffer(int(rng.integers(1, 500)), a, b))
        total = plan_arena(bufs)
        for i, p in enumerate(bufs):
            assert p.offset % 16 == 0 and p.offset + p.size <= total
            for q in bufs[i + 1:]:
                if p.first <= q.last and q.first <= p.last:
                    assert p.offset + p.size <= q.offset or q.offset + q.size <= p.offset
        peak = max(sum(b.size for b in bufs if b.first <= t <= b.last) for t in range(-1, 12))
        assert peak <= total <= sum(-(-b.size // 16) * 16 for b in bufs)
