"""Channel structure of a model, read from Torch-Pruning's dependency graph.

:func:`analyze` finds the *channel groups* (output channels that must be pruned together,
e.g. every block output of a ResNet stage plus its shortcut) and builds an exact analytic
model of the binary operations (BOPs) as a function of the channels kept per group, so
policies can search plans quickly and predict the BOPs that surgery will produce.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from bnnprune.metrics.ops import is_bop_layer, layer_macs
from bnnprune.nn import PER_CHANNEL_TYPES, binary_layers

__all__ = ["ChannelGroup", "PruningSpace", "analyze", "check_supported", "prune_channels"]

InputShape = tuple[int, int, int]

_SUPPORTED = "Conv2d (groups=1), Linear, BatchNorm, PReLU, RSign and RPReLU"
_UNUSUAL = {  # graph ops whose channel mapping Torch-Pruning may not follow
    tp.ops.OPTYPE.SLICE,
    tp.ops.OPTYPE.SPLIT,
    tp.ops.OPTYPE.UNBIND,
    tp.ops.OPTYPE.EXPAND,
    tp.ops.OPTYPE.CUSTOMIZED,
}


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that are pruned together; named after its first binary layer."""

    name: str
    binary: tuple[str, ...]  # binary layers whose output channels belong to the group
    layers: tuple[str, ...]  # every conv / linear whose output channels belong to the group
    norms: tuple[str, ...]  # batch norms that lose the same channels
    channels: int


@dataclass(frozen=True)
class _LayerCost:
    """BOPs of one binary layer: ``positions * out_kept * (in_elems - sum(coef * removed))``."""

    positions: int  # output positions per channel (H*W for a conv, 1 for a linear)
    out_channels: int
    in_elems: int  # weights per output channel (cin*kh*kw or in_features)
    out_group: int | None  # index into PruningSpace.groups, None when fixed
    in_terms: tuple[tuple[int, int], ...]  # (group index, weights lost per removed channel)


@dataclass
class PruningSpace:
    """The prunable channel groups of a model and an exact BOPs model over them."""

    input_shape: InputShape
    groups: tuple[ChannelGroup, ...]
    fixed: dict[str, str]  # binary layer -> why its output channels cannot be pruned
    bops: int  # binary operations of the model as it is
    _costs: tuple[_LayerCost, ...] = field(repr=False, default=())

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def group_of(self) -> dict[str, ChannelGroup]:
        """Every layer (binary or not) whose output channels are prunable -> its group."""
        return {layer: g for g in self.groups for layer in g.layers}

    def bops_for(self, keep: Sequence[int]) -> int:
        """BOPs after keeping ``keep[i]`` channels of ``groups[i]`` (exact, no forward pass)."""
        removed = [g.channels - k for g, k in zip(self.groups, keep, strict=True)]
        total = 0
        for c in self._costs:
            out = c.out_channels - (removed[c.out_group] if c.out_group is not None else 0)
            k = c.in_elems - sum(coef * removed[gi] for gi, coef in c.in_terms)
            total += c.positions * out * k
        return total


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Torch-Pruning's warnings for the duration of one call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_supported(model: nn.Module) -> None:
    """Raise ValueError naming the first module that channel surgery cannot handle.

    Supported: Conv2d with groups=1, Linear, BatchNorm, parameter-free modules and modules
    whose own parameters are scalars (e.g. a learnable activation scale).
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(
                    f"cannot prune channels of this model: {name!r} is a grouped/depthwise "
                    f"convolution (groups={m.groups}); channel surgery supports {_SUPPORTED}"
                )
        elif isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU,
                            *PER_CHANNEL_TYPES)):
            continue
        elif any(p.numel() > 1 for p in m.parameters(recurse=False)):
            raise ValueError(
                f"cannot prune channels of this model: {name or 'the model'!r} "
                f"({type(m).__name__}) holds parameters surgery cannot resize; "
                f"it supports {_SUPPORTED}"
            )


class _PerChannelPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning handler of :data:`bnnprune.nn.PER_CHANNEL_TYPES`: slices every (C,)
    parameter; input and output channels are the same channels (as for BatchNorm)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(self.get_out_channels(layer))) - {int(i) for i in idxs})
        for pname, p in list(layer.named_parameters(recurse=False)):
            setattr(layer, pname, self._prune_parameter_and_grad(p, keep, 0))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(next(layer.parameters()).shape[0])

    get_in_channels = get_out_channels


_PRUNERS = {t: _PerChannelPruner() for t in PER_CHANNEL_TYPES}


def example_input(model: nn.Module, input_shape: InputShape) -> torch.Tensor:
    """A zero batch of one on the model's device and dtype."""
    p = next(model.parameters())
    return torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype)


def build_graph(model: nn.Module, input_shape: InputShape) -> tp.DependencyGraph:
    """Trace ``model`` into a dependency graph (training mode is restored afterwards)."""
    check_supported(model)
    was_training = model.training
    try:
        with _quiet(), torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=(example_input(model, input_shape),),
                customized_pruners=_PRUNERS,
                verbose=False,
            )
    except Exception as e:  # tracing runs arbitrary user code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"cannot trace the model for channel surgery: {type(e).__name__}: {msg}"
        ) from None
    finally:
        model.train(was_training)
    for name, layer in binary_layers(model).items():
        if layer not in dg.module2node:
            raise ValueError(
                f"cannot prune channels of this model: binary layer {name!r} is not reached "
                "by the traced forward pass"
            )
    return dg


def out_pruning_fn(module: nn.Module) -> Callable[[nn.Module, Sequence[int]], nn.Module]:
    """Torch-Pruning's output-channel handler for a conv or linear module."""
    if isinstance(module, nn.Conv2d):
        return tp.prune_conv_out_channels
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    raise ValueError(f"cannot prune output channels of {type(module).__name__}")


def _weights_per_input(module: nn.Module) -> int:
    """Weights of one output filter that belong to one input index (kh*kw, or 1)."""
    w = module.weight
    return int(w[0].numel() // w.shape[1])


def _reaches_output(dg: tp.DependencyGraph, module: nn.Module) -> bool:
    """True if the module's output flows to a model output without another conv/linear."""
    stack = [dg.module2node[module]]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if not node.outputs or node.type == tp.ops.OPTYPE.OUTPUT:
            return True
        for nxt in node.outputs:
            if not isinstance(nxt.module, (nn.Conv2d, nn.Linear)):
                stack.append(nxt)
    return False


class _Recorder:
    """Forward hooks: each binary layer's output elements and BOPs (by the one cost rule of
    :mod:`bnnprune.metrics.ops`: 0 for a binary layer fed real inputs), the output shape."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sizes: dict[str, int] = {}
        self.bops: dict[str, int] = {}
        self.out_shape: tuple[int, ...] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _layer_hook(self, name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def fn(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            self.sizes[name] = int(out[0].numel())
            self.bops[name] = layer_macs(m, inp, out[:1]) if is_bop_layer(m) else 0

        return fn

    def _model_hook(self, m: nn.Module, inp: tuple, out: object) -> None:
        self.out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None

    def __enter__(self) -> _Recorder:
        layers = binary_layers(self.model).items()
        self._handles = [m.register_forward_hook(self._layer_hook(n)) for n, m in layers]
        self._handles.append(self.model.register_forward_hook(self._model_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    @torch.no_grad()
    def run(self, input_shape: InputShape) -> _Recorder:
        """One forward pass in eval mode (training mode is restored)."""
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(example_input(self.model, input_shape))
        finally:
            self.model.train(was_training)
        return self


def analyze(model: nn.Module, input_shape: InputShape) -> PruningSpace:
    """Find the prunable channel groups of ``model`` and its analytic BOPs model.

    A group is prunable when it contains the output channels of at least one binary layer
    and none of its layers feeds a model output directly (the classifier keeps its classes).
    Full-precision layers coupled to a binary group (a ResNet stem or shortcut) follow it.
    """
    input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape}")
    layers = binary_layers(model)
    if not layers:
        raise ValueError("model has no binary layers to prune (use BinaryConv2d / BinaryLinear)")
    with _Recorder(model) as rec:  # records during the tracing forward pass
        dg = build_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    out_elems = rec.sizes

    groups: list[ChannelGroup] = []
    fixed: dict[str, str] = {}
    in_terms: dict[str, dict[int | None, int]] = {n: {} for n in layers}
    out_group: dict[str, int | None] = {}
    seen: set[str] = set()
    with _quiet():
        for name, layer in layers.items():
            if name in seen:
                continue
            group = dg.get_pruning_group(layer, out_pruning_fn(layer), [0])
            members, norms, inputs = [], [], []
            for item in group.items:
                mod = item.dep.target.module
                if not isinstance(mod, nn.Module) or mod not in names:
                    continue
                is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
                if isinstance(mod, (nn.Conv2d, nn.Linear)) and is_out:
                    if list(item.idxs) != [0]:
                        raise ValueError(
                            f"cannot prune channels of this model: {names[mod]!r} is coupled to "
                            f"{name!r} with reordered channels"
                        )
                    members.append(mod)
                elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    norms.append(names[mod])
                elif isinstance(mod, (nn.Conv2d, nn.Linear)) and names[mod] in layers:
                    inputs.append((names[mod], len(item.idxs) * _weights_per_input(mod)))
            order = {m: i for i, m in enumerate(names)}
            members.sort(key=order.__getitem__)
            bin_members = tuple(names[m] for m in members if names[m] in layers)
            seen.update(bin_members)
            channels = {int(m.weight.shape[0]) for m in members}
            output = next((names[m] for m in members if _reaches_output(dg, m)), None)
            if output is not None or len(channels) != 1:
                why = (
                    f"its outputs feed the model output through {output!r}"
                    if output is not None
                    else "it is coupled to layers of different widths"
                )
                fixed.update({b: why for b in bin_members})
                gi: int | None = None
            else:
                gi = len(groups)
                groups.append(
                    ChannelGroup(
                        name=bin_members[0],
                        binary=bin_members,
                        layers=tuple(names[m] for m in members),
                        norms=tuple(sorted(set(norms), key=list(names.values()).index)),
                        channels=channels.pop(),
                    )
                )
            for b in bin_members:
                out_group[b] = gi
            if gi is not None:
                for lname, coef in inputs:
                    in_terms[lname][gi] = in_terms[lname].get(gi, 0) + coef

    costs = []
    for name, layer in layers.items():
        if not is_bop_layer(layer):  # binary weights on real inputs: float MACs, no BOPs
            continue
        cout = int(layer.weight.shape[0])
        costs.append(
            _LayerCost(
                positions=out_elems[name] // cout,
                out_channels=cout,
                in_elems=int(layer.weight[0].numel()),
                out_group=out_group.get(name),
                in_terms=tuple((g, c) for g, c in in_terms[name].items() if g is not None),
            )
        )
    space = PruningSpace(input_shape, tuple(groups), fixed, 0, tuple(costs))
    space.bops = space.bops_for([g.channels for g in groups])
    _trial(model, space, dg, rec.out_shape)
    return space


def _unusual_ops(dg: tp.DependencyGraph, module: nn.Module) -> list[str]:
    """Names of unusual graph ops between a layer and the next convs/linears."""
    found, stack, seen = [], [dg.module2node[module]], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        name = node.grad_fn.name() if hasattr(node.grad_fn, "name") else str(node.grad_fn)
        unknown = node.type == tp.ops.OPTYPE.ELEMENTWISE and "Unknown" in str(node.module)
        if node.type in _UNUSUAL or unknown:
            found.append(name)
        stack.extend(n for n in node.outputs if not isinstance(n.module, (nn.Conv2d, nn.Linear)))
    return sorted(set(found))


def _try_removal(
    model: nn.Module, space: PruningSpace, names: list[str], out_shape: tuple[int, ...] | None
) -> str | None:
    """Remove channel 0 of the named groups from a copy; the problem found, or None."""
    trial = copy.deepcopy(model)
    keep = [g.channels - (g.name in names) for g in space.groups]
    try:
        prune_channels(trial, {n: [0] for n in names}, space.input_shape)
        with _Recorder(trial) as rec:
            rec.run(space.input_shape)
    except Exception as e:  # the user's forward pass after surgery
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"the pruned model fails ({type(e).__name__}: {first})"
    if rec.out_shape != out_shape:
        return "the output shape changes"
    if sum(rec.bops.values()) != space.bops_for(keep):
        return "its BOPs differ from the dependency analysis"
    return None


def _trial(
    model: nn.Module,
    space: PruningSpace,
    dg: tp.DependencyGraph,
    out_shape: tuple[int, ...] | None,
) -> None:
    """Check on a copy that surgery works on every group; ValueError naming the culprit."""
    names = [g.name for g in space.groups if g.channels > 1]
    if not names or _try_removal(model, space, names, out_shape) is None:
        return
    for name in names:
        problem = _try_removal(model, space, [name], out_shape)
        if problem is not None:
            ops = _unusual_ops(dg, model.get_submodule(name))
            via = f" (through {', '.join(ops)})" if ops else ""
            raise ValueError(
                f"cannot prune channels of {name!r}{via}: after surgery {problem}; the model "
                "contains an operation channel surgery cannot follow"
            )
    raise ValueError("channel surgery fails when all groups are pruned together")


@torch.no_grad()
def output_shape(model: nn.Module, input_shape: InputShape) -> tuple[int, ...]:
    was_training = model.training
    model.eval()
    try:
        return tuple(model(example_input(model, input_shape)).shape)
    finally:
        model.train(was_training)


def prune_channels(
    model: nn.Module, removed: Mapping[str, Sequence[int]], input_shape: InputShape
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Remove output channels in place: layer name -> indices; the layer's group follows.

    Returns, per binary layer, the surviving output channels and weight columns (dim 1),
    as indices into the layer's weight before surgery.
    """
    dg = build_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    layers = binary_layers(model)
    kept_out = {n: list(range(m.weight.shape[0])) for n, m in layers.items()}
    kept_in = {n: list(range(m.weight.shape[1])) for n, m in layers.items()}
    modules = dict(model.named_modules())
    with _quiet():
        for root, idxs in removed.items():
            idxs = sorted({int(i) for i in idxs})
            if not idxs:
                continue
            module = modules.get(root)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                raise ValueError(f"no conv or linear layer named {root!r} to prune")
            width = int(module.weight.shape[0])
            if idxs[0] < 0 or idxs[-1] >= width:
                raise ValueError(f"channel indices for {root!r} must lie in [0, {width})")
            group = dg.get_pruning_group(module, out_pruning_fn(module), idxs)
            if not dg.check_pruning_group(group):
                raise ValueError(f"removing {len(idxs)} channels of {root!r} would empty a layer")
            for item in group.items:
                name = names.get(item.dep.target.module)
                if name not in layers:
                    continue
                gone = set(item.idxs)
                kept = kept_out if dg.is_out_channel_pruning_fn(item.dep.handler) else kept_in
                kept[name] = [v for j, v in enumerate(kept[name]) if j not in gone]
            group.prune()
    return kept_out, kept_in


def group_keep_to_layers(space: PruningSpace, keep: Mapping[str, int]) -> dict[str, int]:
    """Expand channels kept per group (by group name) to every binary layer of the group."""
    return {b: int(keep[g.name]) for g in space.groups for b in g.binary}
