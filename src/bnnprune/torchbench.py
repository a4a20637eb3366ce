"""PyTorch inference speed of a pruned model against its unpruned one, on a GPU or the CPU.

A GPU user runs a pruned network through PyTorch's own kernels (cuDNN): it is an ordinary
``nn.Module`` with fewer channels. This module measures that path in the fastest form PyTorch
offers for inference, pruned and unpruned interleaved in one run:

- an inference copy (:func:`inference_copy`): eval mode, binary layers frozen (weights
  binarized once, :mod:`bnnprune.nn.frozen`), each BatchNorm right after a conv or linear
  folded into it (:func:`bnnprune.engine.fold.bn_affine`), cast to the form's dtype,
  channels-last;
- run eagerly, replayed as a CUDA graph, or compiled by ``torch.compile`` (CUDA graphs
  included on a GPU); a mode that fails falls back to a simpler one and the result says why;
- timed (:func:`time_interleaved`) with CUDA events after a synchronisation on a GPU,
  ``time.perf_counter`` on the CPU, medians of samples that alternate pruned and unpruned;
- every timed runner's output checked against the float32 eager model on the same inputs.

The library never prints: :func:`format_comparison` renders :func:`compare_models`' result.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from bnnprune.engine.errors import EngineError
from bnnprune.engine.fold import bn_affine
from bnnprune.machine import cpu_name
from bnnprune.metrics import summarize
from bnnprune.nn import RPReLU
from bnnprune.nn.frozen import (
    FrozenBinaryConv2d,
    FrozenBinaryLinear,
    FrozenRSign,
    freeze_binary_layers,
)

__all__ = [
    "DEFAULT_BATCHES",
    "DTYPES",
    "MODES",
    "Form",
    "InferenceCopy",
    "Runner",
    "TorchBenchError",
    "agreement",
    "calls_per_sample",
    "check_request",
    "compare_models",
    "cuda_clock",
    "default_forms",
    "device_info",
    "fold_batchnorms",
    "format_comparison",
    "inference_copy",
    "make_runner",
    "time_interleaved",
    "wall_clock",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("eager", "cudagraph", "compile")
DEFAULT_BATCHES = (1, 64, 256)
MODELS = ("pruned", "unpruned")

Clock = Callable[[Callable[[], object], int], float]  # (call, n) -> seconds for n calls


class TorchBenchError(ValueError):
    """A benchmark request that cannot run: unknown dtype or mode, bad batch, wrong device."""


@dataclass(frozen=True)
class Form:
    """How a model runs: its dtype (a key of :data:`DTYPES`) and mode (one of :data:`MODES`)."""

    dtype: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.dtype}/{self.mode}"


def default_forms(device: torch.device) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Dtypes and modes measured when none are asked for: bf16 and fp16 as CUDA graphs and
    compiled on a GPU; float32 and bf16 eagerly on the CPU (compiling needs a C++ compiler
    and minutes there, so it is asked for explicitly)."""
    if device.type == "cuda":
        return ("bfloat16", "float16"), ("cudagraph", "compile")
    return ("float32", "bfloat16"), ("eager",)


def check_request(device: torch.device, dtypes: Sequence[str] | None = None,
                  modes: Sequence[str] | None = None,
                  batches: Sequence[int] = DEFAULT_BATCHES, repeats: int = 20) -> list[Form]:
    """The forms to measure, or TorchBenchError (one line) for a request that cannot run:
    checked before any model is loaded."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TorchBenchError(f"device {device} requested but CUDA is not available")
    default_dtypes, default_modes = default_forms(device)
    dtypes = tuple(dtypes or default_dtypes)
    modes = tuple(modes or default_modes)
    for d in dtypes:
        if d not in DTYPES:
            raise TorchBenchError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    for m in modes:
        if m not in MODES:
            raise TorchBenchError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        if m == "cudagraph" and device.type != "cuda":
            raise TorchBenchError(f"mode cudagraph needs a CUDA device, got {device}")
    if not batches or any(int(b) != b or b < 1 for b in batches):
        raise TorchBenchError(f"batch sizes must be whole numbers >= 1, got {list(batches)}")
    if repeats < 1:
        raise TorchBenchError(f"repeats must be >= 1, got {repeats}")
    return [Form(d, m) for d in dict.fromkeys(dtypes) for m in dict.fromkeys(modes)]


# --------------------------------------------------------------------------- inference copy


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps the frozen binary layers as modules, so their BatchNorms
    can be found behind them (and the per-channel layers, whose shapes depend on input)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaves = (FrozenBinaryConv2d, FrozenBinaryLinear, FrozenRSign, RPReLU)
        return isinstance(m, leaves) or super().is_leaf_module(m, qualname)


_FOLDS_INTO = (nn.Conv2d, nn.Linear, FrozenBinaryConv2d, FrozenBinaryLinear)
# ops through which only the signs of a value matter to a binarizing consumer when the value
# is scaled by a positive constant per channel (commute with it) ...
_SCALE_PASS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.Flatten, nn.Identity, nn.Dropout, nn.ReLU)
# ... and when it is changed by any per-element map that keeps its sign (commute with sign)
_SIGN_PASS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.ReLU)


def _signs_only(node: fx.Node, modules: dict[str, nn.Module], passing: tuple[type, ...]
                ) -> bool:
    """True when every use of ``node``'s value, through modules of ``passing`` types, is
    binarized by a frozen binary layer: then only the sign of each element matters."""
    for user in node.users:
        m = modules.get(user.target) if user.op == "call_module" else None
        binarizes = (isinstance(m, (FrozenBinaryConv2d, FrozenBinaryLinear))
                     and m.binarize_input and user.args[0] is node)
        if not binarizes and not (isinstance(m, passing) and _signs_only(user, modules, passing)):
            return False
    return bool(node.users)


def _integer_outputs(layer: nn.Module) -> bool:
    """A frozen binary layer whose outputs are whole numbers: ±1 inputs (and padding), ±1
    weights, no bias."""
    return (isinstance(layer, (FrozenBinaryConv2d, FrozenBinaryLinear)) and layer.binarize_input
            and layer.bias is None and bool((layer.weight.abs() == 1).all()))


def _set_tensor(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a parameter or buffer of ``layer`` (even one that was None)."""
    if name in layer._parameters:
        setattr(layer, name, nn.Parameter(value, requires_grad=False))
    else:
        setattr(layer, name, value)


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module, scaled: bool, rounded: bool) -> None:
    """``bn(layer(x))`` as one layer: weights times alpha per output channel, bias
    ``bias * alpha + beta`` (alpha, beta: the eval-mode BatchNorm as float32 affine).

    ``scaled``: divide both by |alpha| where alpha != 0, so the weights keep their own
    rounding (±1 stays ±1, exact in bf16/fp16) and the output is BatchNorm's over a positive
    per-channel constant (the same signs).
    ``rounded`` (integer outputs only): move the bias to the half-integer that keeps every
    output's sign, so a bf16 or fp16 bias below 128 or 1024 in magnitude is exact.
    """
    alpha, beta = (torch.from_numpy(a).to(layer.weight) for a in bn_affine(bn))
    w = layer.weight.detach()
    bias = beta if layer.bias is None else layer.bias.detach() * alpha + beta
    if scaled:
        s = torch.where(alpha != 0, alpha.abs(), torch.ones_like(alpha))
        alpha, bias = alpha / s, bias / s
    if rounded:  # sign(n + b) == sign(n - ceil(-b) + 0.5) for every whole number n
        bias = torch.where(alpha != 0, 0.5 - torch.ceil(-bias), bias)
    _set_tensor(layer, "weight", w * alpha.view(-1, *([1] * (w.dim() - 1))))
    _set_tensor(layer, "bias", bias)


def fold_batchnorms(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold every BatchNorm whose input is a conv or linear used nowhere else into that layer
    (in place); return the model (a ``torch.fx.GraphModule`` when it traces, else the model
    unchanged) and how many were folded.

    Where the BatchNorm's output is only ever binarized, the fold keeps the layer's weights
    up to their sign (and behind a binary layer whose signs pass through max-pooling only,
    makes the bias a half-integer), so bf16 and fp16 compute the signs float32 computes
    wherever the weights are exact in them (:func:`_fold_into`).
    """
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - a model fx cannot trace keeps its BatchNorms
        return model, 0
    gm = fx.GraphModule(tracer.root, graph)
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not node.args:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"
                and len(prev.users) == 1 and calls[prev.target] == 1 == calls[node.target]):
            continue
        layer = modules[prev.target]
        if not isinstance(layer, _FOLDS_INTO) or layer.weight.shape[0] != bn.num_features:
            continue
        scaled = _signs_only(node, modules, _SCALE_PASS)
        rounded = scaled and _integer_outputs(layer) and _signs_only(node, modules, _SIGN_PASS)
        try:
            _fold_into(layer, bn, scaled, rounded)
        except EngineError:  # no running statistics: it normalizes by the batch
            continue
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, folded


@dataclass
class InferenceCopy:
    """A model prepared for timed inference, with how many of its BatchNorms were folded."""

    module: nn.Module
    batchnorms: int
    folded: int


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def inference_copy(model: nn.Module, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", channels_last: bool = True
                   ) -> InferenceCopy:
    """An eval-mode copy of ``model`` with binary layers frozen, BatchNorms folded, cast to
    ``dtype`` on ``device`` (channels-last weights); ``model`` itself is not changed."""
    frozen = freeze_binary_layers(copy.deepcopy(model).cpu().float().eval())
    norms = _count_batchnorms(frozen)
    folded_model, folded = fold_batchnorms(frozen)
    module = folded_model.to(device=device, dtype=dtype).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return InferenceCopy(module, norms, folded)


# --------------------------------------------------------------------------- runners


@dataclass
class Runner:
    """One timed call: ``call()`` runs the model on the static input ``x`` (fill it with
    ``x.copy_``: a CUDA graph reads that memory) and returns its output."""

    x: torch.Tensor
    call: Callable[[], torch.Tensor]
    mode: str


def _graph_call(fn: Callable[[], torch.Tensor], device: torch.device
                ) -> Callable[[], torch.Tensor]:
    """``fn`` captured as a CUDA graph after warm-up runs on a side stream (as PyTorch's
    CUDA graph notes prescribe: cuDNN picks its algorithms there, outside the capture)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def _compiled_call(module: nn.Module, x: torch.Tensor, device: torch.device
                   ) -> Callable[[], torch.Tensor]:
    """``torch.compile`` of ``module`` for ``x``'s shape, with CUDA graphs on a GPU
    (mode ``reduce-overhead``); compiled here, so a failure shows before any timing."""
    if device.type == "cuda":
        compiled = torch.compile(module, mode="reduce-overhead", dynamic=False)

        def call() -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new inference step
            return compiled(x)
    else:
        compiled = torch.compile(module, dynamic=False)

        def call() -> torch.Tensor:
            return compiled(x)
    call()
    return call


def make_runner(module: nn.Module, x: torch.Tensor, mode: str) -> Runner:
    """A :class:`Runner` of ``module`` on the static input ``x`` in ``mode``."""
    if mode == "eager":
        return Runner(x, lambda: module(x), mode)
    if mode == "cudagraph":
        return Runner(x, _graph_call(lambda: module(x), x.device), mode)
    if mode == "compile":
        return Runner(x, _compiled_call(module, x, x.device), mode)
    raise TorchBenchError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _fallback(mode: str, device: torch.device) -> str | None:
    """The simpler mode to try when ``mode`` fails (None: nothing simpler)."""
    if mode == "compile":
        return "cudagraph" if device.type == "cuda" else "eager"
    return "eager" if mode == "cudagraph" else None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


# --------------------------------------------------------------------------- timing


def wall_clock(call: Callable[[], object], n: int) -> float:
    """Seconds for ``n`` back-to-back calls on the CPU (``time.perf_counter``)."""
    t = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - t


def cuda_clock(device: torch.device) -> Clock:
    """A clock for CUDA work: synchronise (nothing earlier is counted), record an event,
    make the calls, record an event, wait for it; the seconds between the events."""
    def clock(call: Callable[[], object], n: int) -> float:
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return clock


def calls_per_sample(batch: int, seconds_per_call: float, min_sample_s: float,
                     max_calls: int = 1000) -> int:
    """Calls timed together in one sample: one at batch 1 (latency: each sample one call
    after a synchronisation); otherwise enough back-to-back calls that a sample lasts
    ``min_sample_s`` (throughput: the device stays busy and one synchronisation is shared)."""
    if batch == 1 or seconds_per_call <= 0:
        return 1
    return max(1, min(max_calls, math.ceil(min_sample_s / seconds_per_call)))


def time_interleaved(calls: Sequence[Callable[[], object]], *, repeats: int, n: int,
                     clock: Clock) -> list[list[float]]:
    """``repeats`` samples of seconds per call for each of ``calls``, a sample timing ``n``
    back-to-back calls; each round samples every call, in reverse order every other round,
    so machine load and clock drift fall on all of them alike and none always goes first."""
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(repeats):
        order = range(len(calls)) if r % 2 == 0 else range(len(calls) - 1, -1, -1)
        for i in order:
            samples[i].append(clock(calls[i], n) / n)
    return samples


# --------------------------------------------------------------------------- checking


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """How close ``out`` is to the reference ``ref`` (both (N, classes)): the fraction of
    images with the same argmax, the largest absolute error, and that error over the
    largest reference magnitude."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    err = float((out - ref).abs().max()) if out.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    same = (out.flatten(1).argmax(1) == ref.flatten(1).argmax(1)).float().mean()
    return {"argmax_agreement": float(same), "max_abs_error": err,
            "max_rel_error": err / scale if scale else err}


def _worst(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    if a is None:
        return dict(b)
    return {"argmax_agreement": min(a["argmax_agreement"], b["argmax_agreement"]),
            "max_abs_error": max(a["max_abs_error"], b["max_abs_error"]),
            "max_rel_error": max(a["max_rel_error"], b["max_rel_error"])}


# --------------------------------------------------------------------------- comparison


def device_info(device: torch.device) -> dict[str, Any]:
    """The device and library versions a measurement ran with (GPU name on CUDA)."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpu": cpu_name()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version())
    else:
        info["torch_threads"] = torch.get_num_threads()
    return info


def _work(pruned: nn.Module, unpruned: nn.Module,
          input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """BOPs, float MACs and all MACs per image of both models and their ratios (on a GPU a
    binary MAC runs as a float MAC, so all MACs is what cuDNN computes)."""
    s = {k: summarize(m, input_shape) for k, m in zip(MODELS, (pruned, unpruned), strict=True)}
    out: dict[str, Any] = {}
    for key, get in (("bops", lambda x: x.bops), ("float_macs", lambda x: x.float_macs),
                     ("all_macs", lambda x: x.bops + x.float_macs)):
        p, u = get(s["pruned"]), get(s["unpruned"])
        out[key] = {"pruned": p, "unpruned": u, "ratio": p / u if u else float("nan")}
    return out


@contextlib.contextmanager
def _cudnn_autotune() -> Iterator[None]:
    """cuDNN picks its fastest algorithm per shape while measuring (restored afterwards)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """float32 convolutions and matmuls without TF32 (on by default for cuDNN convolutions),
    so the reference on a GPU is float32 arithmetic (restored afterwards)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The float32 eager output of ``model`` on ``x``."""
    with _exact_float32():
        return model(x.float())


def _static_input(data: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = data.to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _runner_pair(copies: dict[str, InferenceCopy], data: torch.Tensor, form: Form,
                 device: torch.device, channels_last: bool, warmup: int, clock: Clock,
                 fallbacks: list[dict[str, str]]) -> dict[str, Runner]:
    """Runners of both models on ``data`` in the form's mode, warmed up; a mode that fails
    for either model falls back to a simpler one for both (noted in ``fallbacks``)."""
    mode = form.mode
    while True:
        try:
            if mode == "compile":
                torch.compiler.reset()  # runners of earlier batches are gone: no stale caches
            runners = {}
            for key in MODELS:
                x = _static_input(data, DTYPES[form.dtype], channels_last)
                runners[key] = make_runner(copies[key].module, x, mode)
                clock(runners[key].call, warmup)
            return runners
        except Exception as e:  # noqa: BLE001 - compiling and capturing fail in many ways
            nxt = _fallback(mode, device)
            if nxt is None:
                raise
            fallbacks.append({"batch": str(len(data)), "mode": mode, "error": _one_line(e),
                              "instead": nxt})
            mode = nxt


@torch.no_grad()
def compare_models(pruned: nn.Module, unpruned: nn.Module, input_shape: tuple[int, int, int],
                   *, device: torch.device | str = "cpu", dtypes: Sequence[str] | None = None,
                   modes: Sequence[str] | None = None,
                   batches: Sequence[int] = DEFAULT_BATCHES, repeats: int = 20,
                   warmup: int = 5, min_sample_s: float = 0.005, channels_last: bool = True,
                   seed: int = 0, clock: Clock | None = None) -> dict[str, Any]:
    """Time ``pruned`` against ``unpruned`` in PyTorch on ``device``, interleaved, for every
    dtype x mode (:func:`check_request`) and batch size; check each timed runner's outputs
    against the float32 eager model. ``clock`` replaces the device's clock (tests).
    Returns a JSON-ready dict (:func:`format_comparison` renders it)."""
    device = torch.device(device)
    forms = check_request(device, dtypes, modes, batches, repeats)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise TorchBenchError(f"input_shape must be (C, H, W), got {input_shape}")
    clock = clock or (cuda_clock(device) if device.type == "cuda" else wall_clock)
    refs = {k: copy.deepcopy(m).float().eval().to(device)
            for k, m in zip(MODELS, (pruned, unpruned), strict=True)}
    gen = torch.Generator().manual_seed(seed)
    data = {b: torch.randn(b, *shape, generator=gen).to(device) for b in dict.fromkeys(batches)}
    out_shapes = {k: tuple(_reference(refs[k], data[batches[0]]).shape) for k in MODELS}
    if out_shapes["pruned"] != out_shapes["unpruned"]:
        raise TorchBenchError(f"the models' outputs differ in shape ({out_shapes['pruned']} vs "
                              f"{out_shapes['unpruned']}): not a model and its pruned copy")
    result: dict[str, Any] = {"device": device_info(device), "input_shape": list(shape),
                              "channels_last": channels_last, "repeats": repeats,
                              "work": _work(pruned, unpruned, shape), "forms": []}
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with _cudnn_autotune(), on_device:  # streams and graphs are made on the device measured
        for form in forms:
            result["forms"].append(_measure_form(refs, data, form, device,
                                                 channels_last, repeats, warmup, min_sample_s,
                                                 clock))
    result["best"] = _best(result["forms"])
    return result


def _measure_form(refs: dict[str, nn.Module], data: dict[int, torch.Tensor], form: Form,
                  device: torch.device, channels_last: bool, repeats: int, warmup: int,
                  min_sample_s: float, clock: Clock) -> dict[str, Any]:
    """One form: both models at every batch size, checked and timed. The float32 eager
    reference sees the inputs the form sees (rounded to its dtype), so the check measures
    the form's arithmetic, not the rounding of its inputs."""
    copies = {k: inference_copy(refs[k], dtype=DTYPES[form.dtype], device=device,
                                channels_last=channels_last) for k in MODELS}
    entry: dict[str, Any] = {
        "dtype": form.dtype, "mode": form.mode,
        "batchnorms_folded": {k: [c.folded, c.batchnorms] for k, c in copies.items()},
        "fallbacks": [], "check": {k: None for k in MODELS}, "batches": {}}
    for batch, x in data.items():
        runners = _runner_pair(copies, x, form, device, channels_last, warmup, clock,
                               entry["fallbacks"])
        seen = x.to(DTYPES[form.dtype])
        for key, r in runners.items():
            entry["check"][key] = _worst(entry["check"][key],
                                         agreement(r.call(), _reference(refs[key], seen)))
        calls = [runners[k].call for k in MODELS]
        probe = min(clock(c, 1) for c in calls)
        n = calls_per_sample(batch, probe, min_sample_s)
        s_p, s_u = time_interleaved(calls, repeats=repeats, n=n, clock=clock)
        p, u = statistics.median(s_p), statistics.median(s_u)
        entry["batches"][str(batch)] = {
            "mode": runners["pruned"].mode, "calls_per_sample": n,
            "pruned_s": p, "unpruned_s": u, "pruned_min_s": min(s_p), "unpruned_min_s": min(s_u),
            "ratio": p / u, "speedup": u / p,
            "pruned_images_per_s": batch / p, "unpruned_images_per_s": batch / u}
        del runners, calls
    return entry


def _best(forms: list[dict[str, Any]]) -> dict[str, Any]:
    """Per batch size, each model's fastest form and the ratio of the two fastest."""
    best: dict[str, Any] = {}
    for batch in forms[0]["batches"]:
        pick = {}
        for key in MODELS:
            f = min(forms, key=lambda f: f["batches"][batch][f"{key}_s"])
            pick[key] = (f"{f['dtype']}/{f['batches'][batch]['mode']}",
                         f["batches"][batch][f"{key}_s"])
        best[batch] = {"pruned_form": pick["pruned"][0], "pruned_s": pick["pruned"][1],
                       "unpruned_form": pick["unpruned"][0], "unpruned_s": pick["unpruned"][1],
                       "ratio": pick["pruned"][1] / pick["unpruned"][1],
                       "speedup": pick["unpruned"][1] / pick["pruned"][1]}
    return best


def format_comparison(result: dict[str, Any]) -> str:
    """Render :func:`compare_models`' dict as plain text."""
    d, w = result["device"], result["work"]
    where = (f"{d['gpu']} ({d['device']}, compute capability {d['capability']}), torch "
             f"{d['torch']}, CUDA {d['cuda']}, cuDNN {d['cudnn']}" if "gpu" in d else
             f"{d['cpu']} ({d['device']}, {d['torch_threads']} torch threads), torch "
             f"{d['torch']}")
    lines = [f"device: {where}",
             f"input {tuple(result['input_shape'])}, channels-last {result['channels_last']}; "
             f"pruned/unpruned: BOPs {w['bops']['ratio']:.3f}, float MACs "
             f"{w['float_macs']['ratio']:.3f}, all MACs {w['all_macs']['ratio']:.3f}",
             "",
             f"{'form':<20}{'batch':>6}{'pruned ms':>11}{'unpruned ms':>13}{'ratio':>8}"
             f"{'speedup':>9}{'img/s pruned':>14}{'img/s unpr.':>13}"]
    for f in result["forms"]:
        for batch, e in f["batches"].items():
            lines.append(f"{f['dtype'] + '/' + e['mode']:<20}{batch:>6}"
                         f"{e['pruned_s'] * 1e3:>11.4f}{e['unpruned_s'] * 1e3:>13.4f}"
                         f"{e['ratio']:>8.3f}{e['speedup']:>8.2f}x"
                         f"{e['pruned_images_per_s']:>14.0f}{e['unpruned_images_per_s']:>13.0f}")
    lines += ["", "fastest form per batch (pruned vs unpruned):"]
    for batch, b in result["best"].items():
        lines.append(f"  batch {batch:>4}: {b['pruned_form']} {b['pruned_s'] * 1e3:.4f} ms vs "
                     f"{b['unpruned_form']} {b['unpruned_s'] * 1e3:.4f} ms = {b['ratio']:.3f} "
                     f"({b['speedup']:.2f}x)")
    lines += ["", "outputs vs the float32 eager model (same inputs; worst over batches):"]
    for f in result["forms"]:
        c, folded = f["check"], f["batchnorms_folded"]
        parts = [f"{k} argmax {100 * c[k]['argmax_agreement']:.1f}%, max error "
                 f"{100 * c[k]['max_rel_error']:.2f}% of max |output|" for k in MODELS]
        lines.append(f"  {f['dtype'] + '/' + f['mode']:<20}{'; '.join(parts)}; BN folded "
                     f"{folded['pruned'][0]}/{folded['pruned'][1]}")
        for fb in f["fallbacks"]:
            lines.append(f"    batch {fb['batch']}: {fb['mode']} failed, ran {fb['instead']} "
                         f"({fb['error']})")
    return "\n".join(lines)
