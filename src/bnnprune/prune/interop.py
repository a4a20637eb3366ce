"""Torch-Pruning interop, both ways, under one convention (lower importance = pruned).

- Our criteria as ``torch_pruning.importance.Importance`` objects, for Torch-Pruning's own
  pruners (``tp.pruner.MetaPruner`` / ``BasePruner``) on models with our binary layers::

      imp = WFFImportance(model, compute_sensitivity(tracker, model))
      tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.3,
                           ignored_layers=[model.classifier]).step()

- Torch-Pruning's importances as bnnprune criteria: ``get_criterion("tp:lamp")``,
  ``"tp:taylor"`` (gradients from a few batches, ``data=[(x, y), ...]``) or an import path
  ``"pkg.module:Class"``; they work wherever a criterion name does (``apply_plan``,
  ``bnnprune prune --criterion tp:lamp``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from bnnprune.imports import import_from_spec
from bnnprune.nn import binary_layers
from bnnprune.prune.criteria import (
    CRITERIA,
    WFF,
    BNScale,
    Criterion,
    Magnitude,
    Random,
)
from bnnprune.prune.graph import ChannelGroup, build_graph, out_pruning_fn
from bnnprune.prune.sensitivity import Sensitivity

__all__ = [
    "TP_IMPORTANCES",
    "BNScaleImportance",
    "CriterionImportance",
    "MagnitudeImportance",
    "RandomImportance",
    "TorchPruningCriterion",
    "WFFImportance",
    "channel_group",
    "criterion_from_spec",
    "gradient_batches",
]

Batch = tuple[torch.Tensor, torch.Tensor]

TP_IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": tp.importance.MagnitudeImportance,
    "lamp": tp.importance.LAMPImportance,
    "fpgm": tp.importance.FPGMImportance,
    "bn_scale": tp.importance.BNScaleImportance,
    "taylor": tp.importance.TaylorImportance,
    "hessian": tp.importance.HessianImportance,
}
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_GRADIENT_TYPES = (tp.importance.GroupTaylorImportance, tp.importance.GroupHessianImportance)


def channel_group(model: nn.Module, group: tp.Group) -> ChannelGroup | None:
    """Our :class:`ChannelGroup` for a Torch-Pruning group of ``model`` (None when the group
    holds no binary layer's output channels and is no full-precision producer feeding only
    binary layers, so Torch-Pruning skips it)."""
    names = {m: n for n, m in model.named_modules()}
    binary = binary_layers(model)
    root = group[0].dep.target.module
    root_idxs = list(group[0].idxs)
    members, norms, consumers = [], [], []
    for item in group.items:
        mod = item.dep.target.module
        if not isinstance(mod, nn.Module) or mod not in names:
            continue
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and item.dep.handler in _IN_FNS:
            consumers.append((names[mod], list(item.idxs) == root_idxs))
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and item.dep.handler in _OUT_FNS:
            if list(item.idxs) != root_idxs:
                raise ValueError(
                    f"{names[mod]!r} is coupled to {names.get(root, '?')!r} with reordered "
                    "channels; bnnprune's importances cannot score this group"
                )
            members.append(names[mod])
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            norms.append(names[mod])
    order = list(names.values())
    members.sort(key=order.index)
    bin_members = tuple(n for n in members if n in binary)
    norms_t = tuple(sorted(set(norms), key=order.index))
    if not bin_members:
        if consumers and all(n in binary and same for n, same in consumers):
            return ChannelGroup(name=members[0], binary=(), layers=tuple(members), norms=norms_t,
                                channels=int(root.weight.shape[0]),
                                consumers=tuple(dict.fromkeys(n for n, _ in consumers)))
        return None
    return ChannelGroup(
        name=bin_members[0],
        binary=bin_members,
        layers=tuple(members),
        norms=norms_t,
        channels=int(root.weight.shape[0]),
    )


class CriterionImportance(tp.importance.Importance):
    """A bnnprune criterion as a Torch-Pruning importance: the criterion's per-channel
    importance of the group's root channels (groups without binary layers: None)."""

    def __init__(
        self,
        criterion: str | Criterion,
        model: nn.Module,
        sensitivity: Sensitivity | None = None,
        **criterion_kwargs: Any,
    ) -> None:
        self.criterion = (CRITERIA[criterion](**criterion_kwargs)
                          if isinstance(criterion, str) else criterion)
        self.model = model
        self.sensitivity = sensitivity

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:  # type: ignore[override]
        cg = channel_group(self.model, group)
        if cg is None:
            return None
        scores = self.criterion.importance(self.model, cg, self.sensitivity)
        idxs = torch.as_tensor([int(i) for i in group[0].idxs], dtype=torch.long)
        return scores.detach().double().cpu()[idxs].float()


class WFFImportance(CriterionImportance):
    """Channels with the highest mean weight flipping frequency are pruned first."""

    def __init__(self, model: nn.Module, sensitivity: Sensitivity) -> None:
        super().__init__(WFF(), model, sensitivity)


class MagnitudeImportance(CriterionImportance):
    """bnnprune's magnitude: smallest mean |latent weight| of the binary filters first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(Magnitude(), model)


class BNScaleImportance(CriterionImportance):
    """Smallest |gamma| of the batch norms after the group's layers first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(BNScale(), model)


class RandomImportance(CriterionImportance):
    """Random channels, reproducible from ``seed`` (the same ones as ``Random(seed)``)."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__(Random(seed), model)


class TorchPruningCriterion(Criterion):
    """A Torch-Pruning importance as a bnnprune criterion (both: lower = pruned).

    Importances that need gradients (Taylor, Hessian) compute them on ``data`` (a few
    ``(inputs, targets)`` batches, normalised as the model expects; at most
    ``max_batches`` are used) with the model in eval mode, so BatchNorm statistics do not
    move; the parameters' previous ``.grad`` are restored afterwards.
    """

    def __init__(
        self,
        importance: tp.importance.Importance,
        name: str = "tp",
        data: Iterable[Batch] | None = None,
        max_batches: int = 4,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    ) -> None:
        if not isinstance(importance, tp.importance.Importance):
            raise ValueError(f"{name!r} is not a torch_pruning.importance.Importance")
        self.tp_importance = importance
        self.name = name  # type: ignore[misc]
        self.max_batches = int(max_batches)
        self.loss_fn = loss_fn
        self.data: list[Batch] | None = None
        if data is not None:
            self.use_data(data)
        self._dg: tp.DependencyGraph | None = None

    @property
    def needs_grads(self) -> bool:  # type: ignore[override]
        return isinstance(self.tp_importance, _GRADIENT_TYPES)

    def use_data(self, data: Iterable[Batch]) -> None:
        """Batches to compute gradients on (the first ``max_batches`` are kept)."""
        self.data = list(itertools.islice(data, self.max_batches))

    @contextlib.contextmanager
    def scoring(self, model: nn.Module, input_shape: tuple[int, int, int]) -> Iterator[None]:
        if self.needs_grads and not self.data:
            raise ValueError(
                f"criterion {self.name!r} needs gradients, and no data was given: pass a few "
                "(inputs, targets) batches as data=..., or on the command line use a "
                "checkpoint whose dataset can be loaded (--dataset/--data-dir)"
            )
        self._dg = build_graph(model, input_shape)
        saved = {p: p.grad for p in model.parameters()}
        try:
            if self.needs_grads:
                self._gradients(model)
            yield
        finally:
            self._dg = None
            for p, g in saved.items():
                p.grad = g

    def _gradients(self, model: nn.Module) -> None:
        """Fill ``.grad`` (Taylor) or the Hessian importance's squared per-sample gradients."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        hessian = isinstance(self.tp_importance, tp.importance.GroupHessianImportance)
        if hessian:
            self.tp_importance.zero_grad()
        try:
            with torch.enable_grad():
                for x, y in self.data or []:
                    x, y = x.to(device), y.to(device)
                    if not hessian:
                        self.loss_fn(model(x), y).backward()
                        continue
                    for i in range(len(y)):
                        model.zero_grad(set_to_none=True)
                        self.loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
                        self.tp_importance.accumulate_grad(model)
        finally:
            model.train(was_training)

    @torch.no_grad()
    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        if self._dg is None:
            raise ValueError(
                f"criterion {self.name!r} scores channels inside scoring(model, input_shape) "
                "(apply_plan and select_channels open it)"
            )
        root = model.get_submodule(group.name)
        tp_group = self._dg.get_pruning_group(
            root, out_pruning_fn(root), list(range(group.channels))
        )
        scores = self.tp_importance(tp_group)
        if scores is None:
            raise ValueError(f"criterion {self.name!r} gave no scores for group {group.name!r}")
        return scores.detach().double().cpu()


def criterion_from_spec(spec: str, **kwargs: Any) -> Criterion:
    """``tp:NAME`` or ``pkg.module:Class`` -> a criterion (kwargs: its constructor's, or
    :class:`TorchPruningCriterion`'s ``data`` / ``max_batches`` for an importance)."""
    prefix, _, attr = spec.partition(":")
    if prefix == "tp":
        if attr not in TP_IMPORTANCES:
            raise ValueError(
                f"unknown Torch-Pruning importance {spec!r}; choose from "
                + ", ".join(f"tp:{k}" for k in TP_IMPORTANCES)
            )
        return TorchPruningCriterion(TP_IMPORTANCES[attr](), name=spec, **kwargs)
    obj = import_from_spec(spec, "criterion")
    if isinstance(obj, type) and issubclass(obj, Criterion):
        return obj(**kwargs)
    if isinstance(obj, type) and issubclass(obj, tp.importance.Importance):
        return TorchPruningCriterion(obj(), name=spec, **kwargs)
    raise ValueError(
        f"criterion {spec!r} is neither a bnnprune Criterion nor a Torch-Pruning Importance class"
    )


def gradient_batches(ds: Any, n_batches: int = 4, batch_size: int = 64) -> list[Batch]:
    """The first ``n_batches`` training batches of a bnnprune Dataset, normalised (no
    augmentation, no shuffle: the same batches every time)."""
    from bnnprune.data import normalize

    n = min(len(ds.train_x), n_batches * batch_size)
    if n == 0:
        raise ValueError("the training split is empty: no batches to compute gradients on")
    x = normalize(ds.train_x[:n], ds.mean, ds.std)
    y = ds.train_y[:n]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]
