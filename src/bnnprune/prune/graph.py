"""Channel structure of a model, read from Torch-Pruning's dependency graph.

:func:`analyze` finds the *channel groups* (output channels that must be pruned together,
e.g. every block output of a ResNet stage plus its shortcut) and builds an exact analytic
model of the binary operations (BOPs) and float MACs as a function of the channels kept per
group (both by the one cost rule of :mod:`bnnprune.metrics.ops`), so policies can search
plans quickly and predict what surgery will produce.

A full-precision conv whose outputs feed only binary layers (the first layer of NIN or
AlexNet) is a group of its own (a *full-precision producer*): pruning its output channels
removes the binary consumers' input channels, so it is scored from the consumers' weights.
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
    """Output channels that are pruned together; named after its first binary layer (a
    full-precision producer group: after its conv, and ``binary`` is empty)."""

    name: str
    binary: tuple[str, ...]  # binary layers whose output channels belong to the group
    layers: tuple[str, ...]  # every conv / linear whose output channels belong to the group
    norms: tuple[str, ...]  # batch norms that lose the same channels
    channels: int
    consumers: tuple[str, ...] = ()  # fp producer: binary layers whose inputs are the channels

    @property
    def fp_producer(self) -> bool:
        """True for a full-precision conv feeding only binary layers (no binary member)."""
        return not self.binary

    @property
    def planned(self) -> tuple[str, ...]:
        """The layers a plan lists for this group: its binary layers, else its own layers."""
        return self.binary or self.layers


@dataclass(frozen=True)
class _LayerCost:
    """MACs of one conv / linear: ``positions * out_kept * (in_elems - sum(coef * removed))``,
    BOPs when ``bop`` (:func:`~bnnprune.metrics.ops.is_bop_layer`), float MACs otherwise."""

    bop: bool
    positions: int  # output positions per channel (H*W for a conv, 1 for a linear)
    out_channels: int
    in_elems: int  # weights per output channel (cin*kh*kw or in_features)
    out_group: int | None  # index into PruningSpace.groups, None when fixed
    in_terms: tuple[tuple[int, int], ...]  # (group index, weights lost per removed channel)


@dataclass
class PruningSpace:
    """The prunable channel groups of a model and an exact BOPs / float MACs model over them."""

    input_shape: InputShape
    groups: tuple[ChannelGroup, ...]
    fixed: dict[str, str]  # binary layer -> why its output channels cannot be pruned
    bops: int  # binary operations of the model as it is
    _costs: tuple[_LayerCost, ...] = field(repr=False, default=())
    float_macs: int = 0  # float multiply-accumulates of the model as it is

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
        return self._macs(keep, bop=True)

    def float_macs_for(self, keep: Sequence[int]) -> int:
        """Float MACs after keeping ``keep[i]`` channels of ``groups[i]`` (exact)."""
        return self._macs(keep, bop=False)

    def _macs(self, keep: Sequence[int], bop: bool) -> int:
        removed = [g.channels - k for g, k in zip(self.groups, keep, strict=True)]
        total = 0
        for c in self._costs:
            if c.bop != bop:
                continue
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


def _mac_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv / linear layer by qualified name (binary or not): the layers that do MACs."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


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
    """Forward hooks: each conv / linear layer's output elements, BOPs and float MACs (by the
    one cost rule of :mod:`bnnprune.metrics.ops`), and the model's output shape."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sizes: dict[str, int] = {}
        self.bops: dict[str, int] = {}
        self.macs: dict[str, int] = {}
        self.out_shape: tuple[int, ...] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _layer_hook(self, name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def fn(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            self.sizes[name] = int(out[0].numel())
            macs = layer_macs(m, inp, out[:1])
            self.bops[name] = macs if is_bop_layer(m) else 0
            self.macs[name] = 0 if is_bop_layer(m) else macs

        return fn

    def _model_hook(self, m: nn.Module, inp: tuple, out: object) -> None:
        self.out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None

    def __enter__(self) -> _Recorder:
        layers = _mac_layers(self.model).items()
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


def analyze(model: nn.Module, input_shape: InputShape, keep_fp: bool = False) -> PruningSpace:
    """Find the prunable channel groups of ``model`` and its analytic BOPs / float MACs model.

    A group is prunable when it contains the output channels of at least one binary layer
    and none of its layers feeds a model output directly (the classifier keeps its classes).
    Full-precision layers coupled to a binary group (a ResNet stem or shortcut) follow it.
    Unless ``keep_fp``, a full-precision conv / linear whose outputs feed only binary layers
    (directly or through BN, pooling and activations) is a group of its own.
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
    order = {n: i for i, n in enumerate(names.values())}
    scan = _GroupScan(dg, names, layers)
    with _quiet():
        for name, layer in layers.items():
            if name not in scan.seen:
                scan.add_binary(name, layer)
        if not keep_fp:
            for name, layer in _mac_layers(model).items():
                if name not in layers and name not in scan.seen:
                    scan.add_fp_producer(name, layer)
    # groups in model order (by their first layer), indices remapped
    perm = sorted(range(len(scan.groups)), key=lambda i: order[scan.groups[i].layers[0]])
    new_index = {old: new for new, old in enumerate(perm)}
    groups = tuple(scan.groups[i] for i in perm)

    costs = []
    for name, layer in _mac_layers(model).items():
        if name not in rec.sizes:  # not called by the forward pass: no cost
            continue
        cout = int(layer.weight.shape[0])
        gi = scan.out_group.get(name)
        terms = scan.in_terms.get(name, {})
        costs.append(
            _LayerCost(
                bop=is_bop_layer(layer),
                positions=rec.sizes[name] // cout,
                out_channels=cout,
                in_elems=int(layer.weight[0].numel()),
                out_group=None if gi is None else new_index[gi],
                in_terms=tuple((new_index[g], c) for g, c in terms.items()),
            )
        )
    space = PruningSpace(input_shape, groups, scan.fixed, 0, tuple(costs))
    full = [g.channels for g in groups]
    space.bops = space.bops_for(full)
    space.float_macs = space.float_macs_for(full)
    _trial(model, space, dg, rec.out_shape)
    return space


class _GroupScan:
    """Builds the channel groups one root layer at a time from the dependency graph."""

    def __init__(self, dg: tp.DependencyGraph, names: dict[nn.Module, str],
                 layers: dict[str, nn.Module]) -> None:
        self.dg, self.names, self.layers = dg, names, layers
        self.groups: list[ChannelGroup] = []
        self.fixed: dict[str, str] = {}
        self.in_terms: dict[str, dict[int, int]] = {}  # layer -> group -> weights per channel
        self.out_group: dict[str, int] = {}  # layer -> group of its output channels
        self.seen: set[str] = set()

    def _items(self, root: str, layer: nn.Module) -> tuple[list[nn.Module], list[str],
                                                           list[tuple[str, int]]]:
        """Coupled output layers, batch norms and (consumer, weights lost per channel)."""
        group = self.dg.get_pruning_group(layer, out_pruning_fn(layer), [0])
        members, norms, inputs = [], [], []
        for item in group.items:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in self.names:
                continue
            is_out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and is_out:
                if list(item.idxs) != [0]:
                    raise ValueError(
                        f"cannot prune channels of this model: {self.names[mod]!r} is coupled "
                        f"to {root!r} with reordered channels"
                    )
                members.append(mod)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                norms.append(self.names[mod])
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                inputs.append((self.names[mod], len(item.idxs) * _weights_per_input(mod)))
        order = {m: i for i, m in enumerate(self.names)}
        members.sort(key=order.__getitem__)
        norms = sorted(set(norms), key=list(self.names.values()).index)
        return members, norms, inputs

    def _add(self, group: ChannelGroup, inputs: list[tuple[str, int]]) -> None:
        gi = len(self.groups)
        self.groups.append(group)
        for lname in group.layers:
            self.out_group[lname] = gi
        for lname, coef in inputs:
            terms = self.in_terms.setdefault(lname, {})
            terms[gi] = terms.get(gi, 0) + coef

    def add_binary(self, name: str, layer: nn.Module) -> None:
        """The group of a binary layer's output channels (or why it is fixed)."""
        members, norms, inputs = self._items(name, layer)
        member_names = tuple(self.names[m] for m in members)
        bin_members = tuple(n for n in member_names if n in self.layers)
        self.seen.update(member_names)
        channels = {int(m.weight.shape[0]) for m in members}
        output = next((self.names[m] for m in members if _reaches_output(self.dg, m)), None)
        if output is not None or len(channels) != 1:
            why = (
                f"its outputs feed the model output through {output!r}"
                if output is not None
                else "it is coupled to layers of different widths"
            )
            self.fixed.update({b: why for b in bin_members})
            return
        self._add(ChannelGroup(name=bin_members[0], binary=bin_members, layers=member_names,
                               norms=tuple(norms), channels=channels.pop()), inputs)

    def add_fp_producer(self, name: str, layer: nn.Module) -> None:
        """A group for a full-precision layer whose outputs feed only binary layers, one input
        channel of each per output channel (no flatten in between); otherwise nothing."""
        members, norms, inputs = self._items(name, layer)
        member_names = tuple(self.names[m] for m in members)
        self.seen.update(member_names)
        consumers = tuple(n for n, _ in inputs)
        if (not consumers or any(n not in self.layers for n in consumers)
                or any(n in self.layers for n in member_names)
                or len({int(m.weight.shape[0]) for m in members}) != 1
                or any(_reaches_output(self.dg, m) for m in members)
                or any(coef != _weights_per_input(self.layers[n]) for n, coef in inputs)):
            return  # (a consumer seeing several inputs per channel, e.g. a flatten: not supported)
        self._add(ChannelGroup(name=member_names[0], binary=(), layers=member_names,
                               norms=tuple(norms), channels=int(members[0].weight.shape[0]),
                               consumers=tuple(dict.fromkeys(consumers))), inputs)


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
    if sum(rec.macs.values()) != space.float_macs_for(keep):
        return "its float MACs differ from the dependency analysis"
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
    """Expand channels kept per group (by group name) to every planned layer of the group."""
    return {b: int(keep[g.name]) for g in space.groups for b in g.planned}
