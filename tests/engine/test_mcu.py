"""The C export on emulated microcontrollers: built with arm-none-eabi-gcc for a Cortex-M4
(hard float), a Cortex-M7 and a Cortex-M3 (software float), run on qemu's mps2 boards with
semihosting, the logits equal the engine's bit for bit; the qemu plugin counts
instructions exactly; the target's const data is the export's flash figure.

Missing tools skip here and fail in CI (CI=1), as the aarch64 check does. Each (model,
target) firmware is built once per module; about 100 s on a shared 2-core machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnnprune.deploy import mcu
from bnnprune.deploy.cexport import C_OP_KINDS, c_footprint, export_c
from bnnprune.engine import EngineError, Program, compile_model
from bnnprune.prune import apply_plan, plan_manual, prune_once
from bnnprune.prune.budget import Budget, footprint_model
from bnnprune.prune.methods import Method

from .test_cexport import MODELS, _assert_same, _prepare
from .test_fashion_mnist import ROOT as FMNIST
from .test_fashion_mnist import _images

# firmware built and run under qemu-system-arm: the slow tier (scripts/setup.sh --devices)
pytestmark = pytest.mark.slow

C_DIR = Path(mcu.__file__).parent / "c"
TARGETS = ("cortex-m4", "cortex-m7", "cortex-m3")
# together these cover every op kind the C export has (checked below)
MCU_MODELS = ("edge", "pack", "residual", "cat", "act", "small", "small_pruned")


def _need_tools() -> None:
    """Skip without the toolchain and qemu (a user's machine), fail in CI."""
    missing = mcu.missing_tools()
    if missing:
        msg = f"{', '.join(missing)} not found (Debian: apt-get install {mcu.DEBIAN_PACKAGES})"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Cortex-M check: {msg}")
        pytest.skip(msg)


@functools.cache
def _program(name: str) -> Program:
    """The compiled test model ``name`` (compiled once per session)."""
    model, shape = _model(name)
    return compile_model(model, shape)


class Firmware:
    """One model's export built for one target."""

    def __init__(self, name: str, target: str, folder: Path) -> None:
        self.program = _program(name)
        self.shape = self.program.input_shape
        self.target = mcu.get_target(target)
        self.footprint = export_c(self.program, folder)
        self.elf, self.code_bytes = mcu.build_firmware(folder, self.target)

    def inputs(self, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((n, *self.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    _need_tools()
    return mcu.build_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def firmwares(tmp_path_factory):
    built: dict[tuple[str, str], Firmware] = {}

    def get(name: str, target: str) -> Firmware:
        _need_tools()
        if (name, target) not in built:
            folder = tmp_path_factory.mktemp(f"{name}-{target}")
            built[name, target] = Firmware(name, target, folder)
        return built[name, target]

    return get


def test_mcu_models_cover_every_c_op():
    kinds = {op.kind for name in MCU_MODELS for op in _program(name).ops}
    assert kinds == set(C_OP_KINDS)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MCU_MODELS)
def test_mcu_build_equals_engine(firmwares, name, target):
    fw = firmwares(name, target)
    x = fw.inputs(4 if target == "cortex-m3" else 8, seed=7)
    ref = fw.program(x, threads=1)
    assert len(np.unique(ref, axis=0)) > 1  # the random model is not constant
    _assert_same(mcu.run_firmware(fw.elf, fw.target, x).logits, ref)


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="no Fashion-MNIST (Debian package dataset-fashion-mnist)")
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["small", "small_pruned"])
def test_mcu_real_fashion_mnist_images(firmwares, name, target):
    fw = firmwares(name, target)
    x = (_images(8 if target == "cortex-m3" else 40) - 0.2860) / 0.3530
    ref = fw.program(x, threads=1)
    assert len(np.unique(ref.argmax(1))) > 1
    _assert_same(mcu.run_firmware(fw.elf, fw.target, x).logits, ref)


def test_plugin_counts_are_repeatable_and_fall_with_pruning(firmwares, plugin):
    runs = {}
    for name in ("small", "small_pruned"):
        fw = firmwares(name, "cortex-m4")
        x = fw.inputs(3, seed=1)
        first = mcu.run_firmware(fw.elf, fw.target, x, plugin=plugin)
        again = mcu.run_firmware(fw.elf, fw.target, x, plugin=plugin)
        _assert_same(first.logits, fw.program(x, threads=1))
        assert first.insns == again.insns and len(first.insns) == 3
        runs[name] = np.mean(first.insns)
    assert 0 < runs["small_pruned"] < runs["small"]


def test_plugin_counts_exactly_the_instructions_between_marks(tmp_path, plugin):
    """A firmware whose marks bracket 0 and then 1000 nops: the counts differ by 1000."""
    for name in mcu.BOARD_FILES:
        shutil.copy(C_DIR / "mcu" / name, tmp_path)
    (tmp_path / "nops.c").write_text(
        '#include "semihost.h"\n'
        "__attribute__((noinline)) void mcu_mark(void) { __asm__ volatile(\"\" ::: \"memory\"); }\n"
        "int main(void) {\n"
        "    mcu_mark(); mcu_mark();\n"
        "    mcu_mark(); __asm__ volatile(\".rept 1000\\n\\tnop\\n\\t.endr\"); mcu_mark();\n"
        "    return 0;\n}\n")
    target = mcu.get_target("cortex-m4")
    r = subprocess.run([mcu.CC, *target.cflags, *mcu.LDFLAGS, "startup_mps2.c", "nops.c",
                        "-o", "nops.elf"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (tmp_path / "logits.txt").write_text("")
    mark = subprocess.run([mcu.NM, "nops.elf"], cwd=tmp_path, capture_output=True,
                          text=True).stdout
    addr = int(re.search(r"^([0-9a-f]+) T mcu_mark$", mark, re.M)[1], 16)
    r = subprocess.run([*mcu.qemu_command(target, "nops.elf", ()), "-plugin",
                        f"{plugin},mark={addr:#x},out=insns.txt"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    empty, nops = (int(v) for v in (tmp_path / "insns.txt").read_text().split())
    assert nops - empty == 1000


def test_a_fault_ends_the_run_with_an_error(tmp_path):
    """An undefined instruction ends qemu with status 1 through the startup's fault
    handler, instead of a hang until the timeout."""
    _need_tools()
    for name in mcu.BOARD_FILES:
        shutil.copy(C_DIR / "mcu" / name, tmp_path)
    (tmp_path / "udf.c").write_text('int main(void) { __asm__ volatile("udf #0"); return 0; }\n')
    target = mcu.get_target("cortex-m4")
    r = subprocess.run([mcu.CC, *target.cflags, *mcu.LDFLAGS, "startup_mps2.c", "udf.c",
                        "-o", "udf.elf"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(mcu.qemu_command(target, "udf.elf", ()), cwd=tmp_path,
                       capture_output=True, timeout=60)
    assert r.returncode == 1


def test_a_hang_is_cut_at_the_timeout(tmp_path):
    _need_tools()
    for name in mcu.BOARD_FILES:
        shutil.copy(C_DIR / "mcu" / name, tmp_path)
    (tmp_path / "hang.c").write_text("int main(void) { for (;;) {} }\n")
    target = mcu.get_target("cortex-m3")
    r = subprocess.run([mcu.CC, *target.cflags, *mcu.LDFLAGS, "startup_mps2.c", "hang.c",
                        "-o", "hang.elf"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(EngineError, match="ran past 2 s"):
        mcu.run_firmware(tmp_path / "hang.elf", target, np.zeros((1, 4), np.float32), timeout=2)


@pytest.mark.parametrize("target", list(mcu.TARGETS))
def test_kernels_need_no_libm_on_cortex_m(tmp_path, target):
    """An export (model.c with bnn_conv.h's inline kernels, and bnn_kernels.c) calls memcpy,
    memset and libgcc's float helpers only (no fmaf); soft double only without an FPU."""
    _need_tools()
    t = mcu.get_target(target)
    export_c(_program("edge"), tmp_path)
    names: set[str] = set()
    for src in ("model.c", "bnn_kernels.c"):
        r = subprocess.run([mcu.CC, *t.cflags, "-c", src, "-o", f"{src}.o"], cwd=tmp_path,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        undefined = subprocess.run([mcu.NM, "-u", f"{src}.o"], cwd=tmp_path,
                                   capture_output=True, text=True).stdout.split()
        names |= {u for u in undefined if u != "U" and not u.startswith("bnn_")}  # ours
    assert {n for n in names if not n.startswith("__aeabi_")} <= {"memcpy", "memset"}
    assert any(n.startswith("__aeabi_d") for n in names) == (not t.fpu)  # soft double


def test_target_const_data_is_the_flash_figure(firmwares, tmp_path):
    """MODEL_WEIGHTS_SECTION moves the const arrays into the named section, and that
    section is the export's MODEL_FLASH_BYTES (within the last array's alignment)."""
    fw = firmwares("small_pruned", "cortex-m4")
    folder = fw.elf.parent.parent
    sizes = {}
    for define in ((), ('-DMODEL_WEIGHTS_SECTION=".bnn_weights"',)):
        obj = tmp_path / "model.o"
        subprocess.run([mcu.CC, *fw.target.cflags, *define, "-c", "model.c", "-o", str(obj)],
                       cwd=folder, check=True)
        out = subprocess.run([mcu.SIZE, "-A", str(obj)], capture_output=True, text=True).stdout
        sizes[bool(define)] = {s: int(n) for s, n in re.findall(r"^(\S+)\s+(\d+)", out, re.M)}
    flash = fw.footprint.flash_bytes
    # 8-byte aligned arrays (the last one needs no padding); the compiler may also fold a
    # tiny constant array (a one-word flip or weight mask) into the code: the figure is an
    # upper bound, tight within a few dozen bytes
    assert flash - 64 <= sizes[True][".bnn_weights"] <= flash
    # what stays in .rodata: at most a small table per convolution / linear layer (each
    # layer's sizes are compiled into its own function, so usually nothing)
    layers = sum(op.kind in ("bconv", "fconv") for op in fw.program.ops)
    descriptors = sum(n for s, n in sizes[True].items() if s.startswith(".rodata"))
    assert descriptors <= 80 * layers
    ro = sum(n for s, n in sizes[False].items() if s.startswith(".rodata"))
    assert ro <= flash + descriptors
    assert 1000 < fw.code_bytes < 20000


def test_firmware_rejects_a_truncated_image(firmwares):
    fw = firmwares("pack", "cortex-m4")
    n = int(np.prod(fw.shape))
    with pytest.raises(EngineError, match="firmware on mps2-an386 failed"):
        mcu.run_firmware(fw.elf, fw.target, np.zeros((1, n + 3), np.float32), timeout=60)
    # the whole first image was still run and written
    assert len((fw.elf.parent / "logits.txt").read_text().splitlines()) == 1


def test_unknown_target_names_the_known_ones():
    with pytest.raises(EngineError, match="cortex-m0plus, cortex-m3, cortex-m4, cortex-m7"):
        mcu.get_target("cortex-m9")


def test_m0plus_code_runs_exact_on_the_m3_board(firmwares):
    """ARMv6-M code (no FPU, no v7-M instructions) on qemu's M3 board."""
    fw = firmwares("pack", "cortex-m0plus")
    x = fw.inputs(2, seed=2)
    _assert_same(mcu.run_firmware(fw.elf, fw.target, x).logits, fw.program(x, threads=1))


SOFT_FMA_CHECK = r"""
#include "bnn_conv.h"
#include <stdio.h>
/* what newlib's fmaf does: round to double, then to float */
static float twice(float a, float b, float c) { return (float)((double)a * b + (double)c); }
static unsigned next(unsigned *seed) { return *seed = *seed * 1103515245u + 12345u; }
static float draw(unsigned *seed, int spread)  /* random sign, 24-bit mantissa, exponent */
{
    int e;
    float m = frexpf((float)(next(seed) >> 8) + 0.5f, &e);
    unsigned r = next(seed) >> 16;
    return ldexpf((r & 1u) ? -m : m, (int)(r >> 1) % spread - spread / 2);
}
int main(void)
{
    unsigned seed = 1, i, differ = 0, twice_differ = 0, hard = 0, hard_sub = 0;
    /* hard cases: c + a*b = c + s*2^-24*(1 - k^2 2^-46) (times 2^E): within 2^-53 of a
     * midpoint of floats, so rounding to double first lands on it and ties */
    for (i = 0; i < 200000u; ++i) {
        float k = (float)(1u + i % 300u), s = (next(&seed) >> 31) ? -1.0f : 1.0f;
        int e = (int)(next(&seed) >> 16) % 60 - 30;
        float c = ldexpf(1.0f + (float)(next(&seed) >> 9) * 0x1p-23f, e);
        float a = s * (1.0f + k * 0x1p-23f), b = ldexpf(1.0f - k * 0x1p-23f, e - 24);
        float want = fmaf(a, b, c), got = bnn_fmaf(a, b, c);
        differ += memcmp(&want, &got, sizeof want) != 0;
        hard += twice(a, b, c) != want;
    }
    /* the same near the largest subnormals: c = n 2^-149, a*b = s 2^-150 (1 - k^2 2^-46) */
    for (i = 0; i < 50000u; ++i) {
        float k = (float)(1u + i % 250u), s = (next(&seed) >> 31) ? -1.0f : 1.0f;
        float c = ldexpf((float)((next(&seed) >> 10) | 0x400000u), -149);
        float a = s * ldexpf(1.0f + k * 0x1p-23f, -100), b = ldexpf(1.0f - k * 0x1p-23f, -50);
        float want = fmaf(a, b, c), got = bnn_fmaf(a, b, c);
        differ += memcmp(&want, &got, sizeof want) != 0;
        hard_sub += twice(a, b, c) != want;
    }
    for (i = 0; i < 1000000u; ++i) {  /* random operands */
        float x = draw(&seed, 20), y = draw(&seed, 20), z = draw(&seed, 40);
        float want = fmaf(x, y, z), got = bnn_fmaf(x, y, z);
        differ += memcmp(&want, &got, sizeof want) != 0;
        twice_differ += twice(x, y, z) != want;
    }
    printf("%u %u %u %u\n", differ, hard, hard_sub, twice_differ);
    return 0;
}
"""


def test_soft_fmaf_rounds_once(tmp_path):
    """The fmaf of cores without FMA (BNN_SOFT_FMA) equals the host's correctly rounded
    fmaf, where rounding through double (newlib's) does not."""
    (tmp_path / "check.c").write_text(SOFT_FMA_CHECK)
    r = subprocess.run(["cc", "-std=c99", "-O2", "-DBNN_SOFT_FMA", f"-I{C_DIR}", "check.c",
                        "-lm", "-o", "check"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True).stdout
    differ, hard, hard_sub, _ = (int(v) for v in out.split())
    assert differ == 0
    # about half the constructed cases round wrong through double
    assert hard > 50_000 and hard_sub > 12_000


BUDGET = json.loads((Path(__file__).parent / "mcu_budget.json").read_text())["budgets"]


@pytest.mark.parametrize("target,name", [(t, n) for t, models in BUDGET.items()
                                         for n in models])
def test_instruction_budget(firmwares, plugin, target, name):
    """Instructions per inference stay under the ceilings of mcu_budget.json."""
    fw = firmwares(name, target)
    x = fw.inputs(3, seed=1)
    run = mcu.run_firmware(fw.elf, fw.target, x, plugin=plugin)
    _assert_same(run.logits, fw.program(x, threads=1))
    mean = sum(run.insns) / len(run.insns)
    assert mean <= BUDGET[target][name], f"{mean:,.0f} instructions per inference"


@functools.cache
def _model(name: str):
    factory, shape, seed = MODELS[name]
    return _prepare(factory, seed), shape


@pytest.mark.parametrize("name", ["edge", "pack", "residual", "cat", "small"])
def test_budget_bytes_are_the_export_of_the_pruned_model(name):
    """The planner's footprint at other channel counts is that of the pruned model's export
    (no second formula: it is c_footprint of the program at those counts); the models the
    channel surgery can trace (ActNet's activations it cannot). One exception, an upper
    bound: a float conv whose epilogue cannot fold into thresholds (a zero BatchNorm scale)
    may fold once the channel is pruned, saving bytes the planner did not count."""
    model, shape = _model(name)
    fm = footprint_model(model, shape)
    assert fm.footprint(fm.full) == c_footprint(_program(name))

    def folds(p: Program) -> list[bool]:
        return [p.prepared(i).thresholds for i, op in enumerate(p.ops)
                if op.kind == "fconv" and p.values[op.output].kind == "bits"]

    for share in (0.3, 0.7):
        keep = {b: max(1, int(c * share)) for b, c in
                plan_manual(model, shape, {}).channels.items()}
        plan = plan_manual(model, shape, keep)
        program = compile_model(apply_plan(model, plan, "magnitude").model.eval(), shape)
        predicted = fm.footprint([plan.keep[g.planned[0]] for g in fm.space.groups])
        real = c_footprint(program)
        if folds(program) == folds(_program(name)):
            assert predicted == real, share
        else:
            assert predicted.flash_bytes > real.flash_bytes, share
            assert dataclasses.replace(predicted, flash_bytes=0) == dataclasses.replace(
                real, flash_bytes=0)


def test_pruned_to_half_the_flash_fits_and_runs_exact(tmp_path):
    """Pruned to a flash budget of 50% of the unpruned const data, the export's flash (and
    the const section the compiler emits) is within the budget and the M4 build is exact."""
    _need_tools()
    model, shape = _model("small")
    fm = footprint_model(model, shape)
    budget = Budget(flash=fm.footprint(fm.full).flash_bytes // 2)
    plan, pruned = prune_once(model, Method("uniform", "magnitude"), shape, budget=budget,
                              footprint_model=fm)
    program = compile_model(pruned.eval(), shape)
    fp = export_c(program, tmp_path)
    assert fp.flash_bytes <= budget.flash and fp.to_dict() == plan.budget["after"]
    target = mcu.get_target("cortex-m4")
    elf, _ = mcu.build_firmware(tmp_path, target)
    obj = tmp_path / "model_section.o"
    subprocess.run([mcu.CC, *target.cflags, '-DMODEL_WEIGHTS_SECTION=".bnn_weights"', "-c",
                    "model.c", "-o", str(obj)], cwd=tmp_path, check=True)
    out = subprocess.run([mcu.SIZE, "-A", str(obj)], capture_output=True, text=True).stdout
    assert int(re.search(r"^\.bnn_weights\s+(\d+)", out, re.M).group(1)) <= budget.flash
    x = np.random.default_rng(3).standard_normal((6, *shape)).astype(np.float32)
    ref = program(x, threads=1)
    assert len(np.unique(ref, axis=0)) > 1
    _assert_same(mcu.run_firmware(elf, target, x).logits, ref)
