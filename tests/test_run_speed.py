"""`bnnprune run`'s engine section: every model compiled to the packed engine, timed
interleaved at batch 1 and 64, checked against PyTorch, and sized as its C export. Timings are
never asserted (the machine may be busy): only their structure and consistency."""

import numpy as np
import pytest
import torch

from bnnprune.engine import compile_model
from bnnprune.machine import ISA_FLAGS, isa_flags, isa_label
from bnnprune.models import build_model
from bnnprune.speed import agreement


def test_agreement_counts_the_images_where_the_top1_classes_match():
    torch.manual_seed(0)
    a = build_model("small", width=0.25, in_channels=1, image_size=28).eval()
    b = build_model("small", width=0.25, in_channels=1, image_size=28).eval()
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    program = compile_model(a, (1, 28, 28))
    assert agreement(a, program, x) == 1.0
    with torch.no_grad():
        want = (a(torch.from_numpy(x)).argmax(1) == b(torch.from_numpy(x)).argmax(1)).float()
    assert agreement(b, program, x) == pytest.approx(want.mean().item())
    assert agreement(b, program, x) < 1.0  # two differently initialised models disagree


def test_isa_flags_and_their_label():
    flags = isa_flags()
    assert set(flags) in (set(), set(ISA_FLAGS))
    assert isa_label({"avx2": True, "popcnt": True, "avx512f": False}) == "avx2 popcnt; no avx512f"
    assert isa_label({"avx512f": False}) == "no avx512f"
    assert isa_label({}) == "instruction-set flags unknown"
