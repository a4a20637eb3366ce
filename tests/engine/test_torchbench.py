"""PyTorch benchmark (bnnprune.torchbench) on the CPU: the inference copies compute what the
eager model computes (every binary layer's input signs, argmax and logits within the dtype's
tolerance), and the timing loop is checked by structure with fake clocks, never by time."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
from torch import nn

from bnnprune import torchbench as tb
from bnnprune.metrics import summarize
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear
from bnnprune.nn.frozen import FrozenBinaryConv2d, FrozenBinaryLinear
from bnnprune.prune import apply_plan, plan_uniform

from .conftest import dyadic_fp_weights, dyadic_input, randomize_bn

SHAPE = (3, 32, 32)
# largest logit error over the largest |logit| accepted per dtype: a few roundings of its
# unit (float32 2^-24, fp16 2^-11, bf16 2^-8) through the float layers after the last sign
TOLERANCE = {"float32": 1e-5, "float16": 2**-8, "bfloat16": 2**-5}


def _dyadic_fp_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms right after a full-precision layer get eps 0, variances 4^j, gammas ±2^k
    and means and betas on a 1/8 grid: their folded thresholds are exact in bf16, so the
    signs of those layers' outputs can be compared bit for bit (the binary layers' folds
    need no such help: that is what the tests check)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for seq in (m for m in model.modules() if isinstance(m, nn.Sequential)):
            kids = list(seq.children())
            for layer, bn in zip(kids, kids[1:]):
                if (isinstance(layer, nn.Conv2d | nn.Linear)
                        and not isinstance(layer, BinaryConv2d | BinaryLinear)
                        and isinstance(bn, nn.modules.batchnorm._BatchNorm)):
                    n = bn.num_features
                    bn.eps = 0.0
                    bn.running_var.copy_(4.0 ** torch.randint(-1, 2, (n,), generator=g))
                    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
                    bn.weight.copy_(sign * 2.0 ** torch.randint(-1, 2, (n,), generator=g))
                    bn.running_mean.copy_(torch.randint(-16, 17, (n,), generator=g) / 8)
                    bn.bias.copy_(torch.randint(-16, 17, (n,), generator=g) / 8)
    return model


def _model(name: str, seed: int = 0, width: float = 0.25) -> nn.Module:
    torch.manual_seed(seed)
    model = randomize_bn(build_model(name, width=width), seed)
    return _dyadic_fp_batchnorms(dyadic_fp_weights(model, seed), seed)


def _signs(model: nn.Module, x: torch.Tensor, types: tuple[type, ...]) -> dict[str, torch.Tensor]:
    """Sign bits of every binary layer's input, by module name."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, a, name=name: seen.__setitem__(name, (a[0].float() >= 0).cpu()))
        for name, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    seen[""] = out.float()
    return seen


@pytest.mark.parametrize("name, dtypes", [
    ("alexnet", ("float32", "float16", "bfloat16")),
    ("small", ("float32", "float16", "bfloat16")),
    ("nin", ("float32", "float16")),  # bf16 rounds NIN's average pools (see the last test)
])
def test_inference_copy_binarizes_exactly_what_eager_does(name: str, dtypes: tuple[str, ...]
                                                          ) -> None:
    model = _model(name)
    shape = (1, 28, 28) if name == "small" else SHAPE
    x = dyadic_input((16, *shape))
    ref = _signs(model.eval(), x, (BinaryConv2d, BinaryLinear))
    for dtype in dtypes:
        copy = tb.inference_copy(model, dtype=tb.DTYPES[dtype])
        assert copy.folded == copy.batchnorms > 0
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                       for m in copy.module.modules())
        xs = x.to(tb.DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
        got = _signs(copy.module, xs, (FrozenBinaryConv2d, FrozenBinaryLinear))
        assert set(got) == set(ref) and len(ref) > 3
        for layer in ref:
            if layer:
                assert torch.equal(got[layer], ref[layer]), (dtype, layer)
        check = tb.agreement(got[""], ref[""])
        assert check["argmax_agreement"] == 1.0
        assert check["max_rel_error"] <= TOLERANCE[dtype], (dtype, check)


def test_nin_in_bf16_only_its_averaged_signs_can_differ() -> None:
    """bf16 rounds the average of an average pool (its output rounds too): the first binary
    layer behind one may see a few signs differ, and everything before it is exact."""
    model = _model("nin")
    x = dyadic_input((16, *SHAPE))
    ref = _signs(model.eval(), x, (BinaryConv2d, BinaryLinear))
    copy = tb.inference_copy(model, dtype=torch.bfloat16)
    got = _signs(copy.module, x.bfloat16().contiguous(memory_format=torch.channels_last),
                 (FrozenBinaryConv2d, FrozenBinaryLinear))
    order = [n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
    after_avg = order.index("bconv7")  # NIN: bconv6 -> BN -> AvgPool2d -> bconv7
    for layer in order[:after_avg]:
        assert torch.equal(got[layer], ref[layer]), layer
    for layer in order[after_avg:]:
        assert (got[layer] != ref[layer]).float().mean() < 1e-3, layer
    check = tb.agreement(got[""], ref[""])
    assert check["argmax_agreement"] >= 15 / 16 and check["max_rel_error"] <= 2**-4


def test_inference_copy_of_a_residual_model_matches_eager() -> None:
    model = _model("reactnet", width=0.125)
    x = dyadic_input((4, *SHAPE))
    with torch.no_grad():
        ref = model.eval()(x)
    copy = tb.inference_copy(model)
    assert 0 < copy.folded <= copy.batchnorms
    with torch.no_grad():
        out = copy.module(x.contiguous(memory_format=torch.channels_last))
    check = tb.agreement(out, ref)
    assert check["argmax_agreement"] == 1.0 and check["max_rel_error"] <= TOLERANCE["float32"]


class _Branchy(nn.Module):
    """A conv read twice, a BatchNorm without running statistics, and one that folds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn_batch = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn_shared(y) + y
        return self.bn(self.conv3(self.bn_batch(self.conv2(z))))


class _Untraceable(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return super().forward(-x)


def test_fold_leaves_what_it_cannot_fold() -> None:
    torch.manual_seed(0)
    model = randomize_bn(_Branchy()).eval()
    bn = model.bn_batch  # normalizes by each batch's statistics, even in eval mode
    bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    folded, n = tb.fold_batchnorms(tb.inference_copy(model, channels_last=False).module)
    assert n == 0  # the copy was folded already: nothing is left to fold
    copy = tb.inference_copy(model, channels_last=False)
    assert (copy.batchnorms, copy.folded) == (3, 1)  # only conv3 -> bn
    kept = {name for name, m in copy.module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kept == {"bn_shared", "bn_batch"}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(copy.module(x), model(x), rtol=1e-5, atol=1e-5)

    seq = randomize_bn(_Untraceable(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    same, n = tb.fold_batchnorms(seq)
    assert same is seq and n == 0
    copy = tb.inference_copy(seq)
    assert (copy.batchnorms, copy.folded) == (1, 0)
    with torch.no_grad():
        torch.testing.assert_close(copy.module(x.abs()), seq(x.abs()))


# --------------------------------------------------------------------------- timing structure


def test_time_interleaved_alternates_who_goes_first_and_divides_by_the_calls() -> None:
    made: list[str] = []
    calls = [lambda: made.append("a"), lambda: made.append("b")]
    ticks = itertools.count(1)

    def clock(call, n):
        for _ in range(n):
            call()
        return float(next(ticks))

    s = tb.time_interleaved(calls, repeats=4, n=3, clock=clock)
    assert made == list("aaabbb" "bbbaaa" "aaabbb" "bbbaaa")
    assert s == [[1 / 3, 4 / 3, 5 / 3, 8 / 3], [2 / 3, 3 / 3, 6 / 3, 7 / 3]]


def test_calls_per_sample() -> None:
    assert tb.calls_per_sample(1, 1e-6, 0.005) == 1  # latency: one call after a sync
    assert tb.calls_per_sample(64, 1e-3, 0.005) == 5
    assert tb.calls_per_sample(64, 0.01, 0.005) == 1
    assert tb.calls_per_sample(64, 1e-9, 0.005) == 1000
    assert tb.calls_per_sample(64, 0.0, 0.005) == 1


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    model = _model("small", seed=1)
    plan = plan_uniform(model, (1, 28, 28), 0.4, round_to=4)
    return apply_plan(model, plan, "magnitude").model.eval(), model


class ScriptedClock:
    """Runs each call as asked; charges 1 ms per pruned call and 2 ms per unpruned one.

    Which runner a call belongs to is told by the order the module documents: per batch,
    warm-up (pruned, unpruned), one probe each, then rounds alternating who goes first.
    """

    def __init__(self, repeats: int) -> None:
        per_batch = ["p", "u", "p", "u"] + list(
            itertools.chain.from_iterable("pu" if r % 2 == 0 else "up" for r in range(repeats)))
        self.script = itertools.cycle(per_batch)
        self.ns: list[int] = []

    def __call__(self, call, n: int) -> float:
        for _ in range(n):
            call()
        self.ns.append(n)
        return n * (1e-3 if next(self.script) == "p" else 2e-3)


def test_compare_models_reports_what_the_clock_measured(pair) -> None:
    pruned, unpruned = pair
    clock = ScriptedClock(repeats=3)
    res = tb.compare_models(pruned, unpruned, (1, 28, 28), dtypes=["float32"],
                            batches=[1, 4], repeats=3, warmup=2, min_sample_s=0.005,
                            clock=clock)
    (form,) = res["forms"]
    assert (form["dtype"], form["mode"], form["fallbacks"]) == ("float32", "eager", [])
    for batch in ("1", "4"):
        e = form["batches"][batch]
        assert e["pruned_s"] == pytest.approx(1e-3) and e["unpruned_s"] == pytest.approx(2e-3)
        assert e["ratio"] == pytest.approx(0.5) and e["speedup"] == pytest.approx(2.0)
        assert e["pruned_images_per_s"] == pytest.approx(int(batch) / 1e-3)
        assert e["calls_per_sample"] == (1 if batch == "1" else 5)  # 5 ms / 1 ms probe
    # per batch: 2 warm-ups of `warmup` calls, 2 probes of 1, 6 samples of calls_per_sample
    assert clock.ns == [2, 2, 1, 1] + [1] * 6 + [2, 2, 1, 1] + [5] * 6
    s_p, s_u = summarize(pruned, (1, 28, 28)), summarize(unpruned, (1, 28, 28))
    assert res["work"]["bops"] == {"pruned": s_p.bops, "unpruned": s_u.bops,
                                   "ratio": pytest.approx(s_p.bops / s_u.bops)}
    assert res["work"]["bops"]["ratio"] < 0.7
    assert res["best"]["4"]["ratio"] == pytest.approx(0.5)
    text = tb.format_comparison(res)
    assert "float32/eager" in text and "0.500" in text


def test_compare_models_checks_every_dtype_against_float32_eager(pair) -> None:
    pruned, unpruned = pair
    res = tb.compare_models(pruned, unpruned, (1, 28, 28), dtypes=list(tb.DTYPES),
                            batches=[2], repeats=2, warmup=1)
    assert [f["dtype"] for f in res["forms"]] == list(tb.DTYPES)
    for f in res["forms"]:
        for key in ("pruned", "unpruned"):
            c = f["check"][key]
            assert c["argmax_agreement"] == 1.0, (f["dtype"], key, c)
            assert c["max_rel_error"] <= TOLERANCE[f["dtype"]], (f["dtype"], key, c)
        assert f["batchnorms_folded"]["pruned"][0] == f["batchnorms_folded"]["pruned"][1] > 0
        e = f["batches"]["2"]
        assert e["pruned_s"] > 0 and e["ratio"] == pytest.approx(e["pruned_s"] / e["unpruned_s"])
    assert res["device"]["device"] == "cpu" and "torch" in res["device"]


def test_a_failing_mode_falls_back_and_says_why(pair, monkeypatch) -> None:
    pruned, unpruned = pair

    def broken(module, x, device):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(tb, "_compiled_call", broken)
    res = tb.compare_models(pruned, unpruned, (1, 28, 28), dtypes=["float32"],
                            modes=["compile"], batches=[1, 2], repeats=1, warmup=1)
    (form,) = res["forms"]
    assert form["mode"] == "compile"
    assert [e["mode"] for e in form["batches"].values()] == ["eager", "eager"]
    assert [(f["batch"], f["mode"], f["instead"]) for f in form["fallbacks"]] == [
        ("1", "compile", "eager"), ("2", "compile", "eager")]
    assert form["fallbacks"][0]["error"] == "RuntimeError: no C++ compiler second line"
    assert "compile failed, ran eager" in tb.format_comparison(res)


@pytest.mark.parametrize("kwargs, match", [
    ({"dtypes": ["int8"]}, "unknown dtype 'int8'"),
    ({"modes": ["fast"]}, "unknown mode 'fast'"),
    ({"modes": ["cudagraph"]}, "cudagraph needs a CUDA device"),
    ({"batches": [0]}, "batch sizes must be"),
    ({"batches": []}, "batch sizes must be"),
    ({"repeats": 0}, "repeats must be"),
])
def test_bad_requests_fail_before_anything_runs(kwargs, match: str) -> None:
    with pytest.raises(tb.TorchBenchError, match=match):
        tb.check_request(torch.device("cpu"), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(tb.TorchBenchError, match="CUDA is not available"):
        tb.check_request(torch.device("cuda"))


def test_models_with_different_outputs_are_refused(pair) -> None:
    pruned, _ = pair
    other = _model("small", seed=2)
    other.fc1 = nn.Linear(other.fc1.in_features, 3)
    with pytest.raises(tb.TorchBenchError, match="outputs differ in shape"):
        tb.compare_models(pruned, other, (1, 28, 28), batches=[1], repeats=1)


def test_default_forms() -> None:
    assert tb.default_forms(torch.device("cuda")) == (("bfloat16", "float16"),
                                                     ("cudagraph", "compile"))
    assert tb.default_forms(torch.device("cpu")) == (("float32", "bfloat16"), ("eager",))
    forms = tb.check_request(torch.device("cpu"), ["float16", "float16"], ["eager"])
    assert [f.name for f in forms] == ["float16/eager"]


# --------------------------------------------------------------------------- CUDA, by structure
# No GPU here: the CUDA calls are replaced by fakes that log what the code asks of them.


class _FakeEvent:
    def __init__(self, log: list[str], enable_timing: bool = False) -> None:
        assert enable_timing
        self.log, self.name = log, f"event{sum(e.startswith('new') for e in log)}"
        log.append(f"new {self.name}")

    def record(self) -> None:
        self.log.append(f"record {self.name}")

    def synchronize(self) -> None:
        self.log.append(f"wait {self.name}")

    def elapsed_time(self, end: _FakeEvent) -> float:
        self.log.append(f"elapsed {self.name}->{end.name}")
        return 250.0  # milliseconds, as CUDA reports them


def test_cuda_clock_synchronises_then_times_the_calls_between_two_events(monkeypatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "Event", lambda **kw: _FakeEvent(log, **kw))
    seconds = tb.cuda_clock(torch.device("cuda"))(lambda: log.append("call"), 2)
    assert seconds == 0.25
    assert log == ["sync", "new event0", "new event1", "record event0", "call", "call",
                   "record event1", "wait event1", "elapsed event0->event1"]


def test_graph_call_warms_up_on_a_side_stream_then_captures_once(monkeypatch) -> None:
    log: list[str] = []

    class Stream:
        def __init__(self, device=None, name: str = "side") -> None:
            self.name = name

        def wait_stream(self, other: Stream) -> None:
            log.append(f"{self.name} waits for {other.name}")

    class Graph:
        def replay(self) -> None:
            log.append("replay")

    @contextlib.contextmanager
    def on(stream: Stream):
        log.append(f"on {stream.name}")
        yield
        log.append(f"off {stream.name}")

    @contextlib.contextmanager
    def capture(graph: Graph):
        log.append("capture")
        yield
        log.append("end capture")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(name="main"))
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    out = torch.zeros(1)

    def fn() -> torch.Tensor:
        log.append("run")
        return out

    replay = tb._graph_call(fn, torch.device("cuda"))
    assert log == ["side waits for main", "on side", "run", "run", "run", "off side",
                   "main waits for side", "capture", "run", "end capture"]
    log.clear()
    assert replay() is out and replay() is out  # the captured output, refreshed by a replay
    assert log == ["replay", "replay"]


def test_compiled_call_on_cuda_uses_cuda_graphs_and_marks_each_step(monkeypatch) -> None:
    log: list[str] = []

    def compile_(module, mode=None, dynamic=None):
        log.append(f"compile mode={mode} dynamic={dynamic}")
        return lambda x: log.append("run") or x

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: log.append("step"))
    x = torch.ones(2)
    call = tb._compiled_call(nn.Identity(), x, torch.device("cuda"))
    assert log == ["compile mode=reduce-overhead dynamic=False", "step", "run"]  # compiled now
    assert call() is x and log[-2:] == ["step", "run"]


def test_cuda_device_info_and_table(monkeypatch, pair) -> None:
    class Props:
        name, major, minor = "NVIDIA Fake GPU", 9, 0

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    info = tb.device_info(torch.device("cuda:0"))
    assert (info["gpu"], info["capability"], info["cudnn"]) == ("NVIDIA Fake GPU", "9.0", 90100)
    pruned, unpruned = pair
    res = tb.compare_models(pruned, unpruned, (1, 28, 28), dtypes=["float32"], batches=[1],
                            repeats=1, warmup=1)
    res["device"] = info
    assert tb.format_comparison(res).splitlines()[0].startswith(
        "device: NVIDIA Fake GPU (cuda:0, compute capability 9.0), torch")
