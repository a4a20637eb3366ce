"""Which channels a group loses: small pluggable criteria with a registry.

A criterion gives every output channel of a :class:`ChannelGroup` an *importance*; the
channels with the lowest importance go (ties: the lower channel index goes first). This is
Torch-Pruning's convention ("lower score = pruned"), so our criteria and Torch-Pruning's
importances plug into each other (:mod:`bnnprune.prune.interop`). Scores of a group with
several layers (a ResNet stage) are pooled over the group, so one channel set is chosen for
all of them. Any criterion combines with any policy.

A full-precision producer group (a first conv feeding only binary layers) has no binary
filters of its own: a per-weight criterion scores each of its channels from the binary
consumers' weights on that *input* channel (WFF: their mean flip frequency), which is what
the channel's removal deletes from the binary part of the network.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from bnnprune.prune.graph import ChannelGroup
from bnnprune.prune.sensitivity import RECORD_HINT, Sensitivity

__all__ = [
    "CRITERIA",
    "BNScale",
    "Criterion",
    "Magnitude",
    "Random",
    "WFF",
    "FlipMagnitude",
    "register_criterion",
]


class Criterion:
    """Base class: subclasses set ``name`` and implement :meth:`importance`."""

    name: ClassVar[str] = ""
    needs_flips: ClassVar[bool] = False
    needs_grads: bool = False  # True: scoring needs gradients computed on data

    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        """One score per channel of ``group``; lower = removed first (Torch-Pruning's way)."""
        raise NotImplementedError

    def scoring(
        self, model: nn.Module, input_shape: tuple[int, int, int]
    ) -> contextlib.AbstractContextManager[None]:
        """Context around the :meth:`choose` calls of one plan: set-up shared by all groups
        (a dependency graph, gradients) goes here; the default needs none."""
        return contextlib.nullcontext()

    def choose(
        self,
        model: nn.Module,
        group: ChannelGroup,
        n_remove: int,
        sensitivity: Sensitivity | None = None,
    ) -> list[int]:
        """Indices (ascending) of the ``n_remove`` channels to remove from ``group``."""
        if n_remove <= 0:
            return []
        scores = self.importance(model, group, sensitivity).detach().double().cpu()
        if scores.shape != (group.channels,):
            raise ValueError(
                f"criterion {self.name!r} gave {tuple(scores.shape)} scores for group "
                f"{group.name!r} of {group.channels} channels"
            )
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"criterion {self.name!r} gave non-finite scores for {group.name!r}")
        order = torch.sort(scores, stable=True).indices  # ascending: lowest importance first
        return sorted(int(i) for i in order[:n_remove])


CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make a criterion available by its ``name``."""
    if not cls.name:
        raise ValueError(f"criterion class {cls.__name__} needs a name")
    CRITERIA[cls.name] = cls
    return cls


def _pooled_filter_mean(
    model: nn.Module, group: ChannelGroup, per_weight: Callable[[str, nn.Module], torch.Tensor]
) -> torch.Tensor:
    """Mean over all weights of each channel's filters in the group's binary layers; for a
    full-precision producer, over the consumers' weights on each input channel."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    count = 0
    for name in group.binary or group.consumers:
        w = per_weight(name, model.get_submodule(name)).detach().double().cpu()
        if group.fp_producer:
            w = w.transpose(0, 1)  # input channel first
        total += w.flatten(1).sum(dim=1)
        count += w[0].numel()
    return total / count


def _flip_frequency(sensitivity: Sensitivity, name: str, m: nn.Module) -> torch.Tensor:
    """Per-weight flip frequency of one binary layer (count / steps in the interval)."""
    counts = None if sensitivity.counts is None else sensitivity.counts.get(name)
    if counts is None or tuple(counts.shape) != tuple(m.weight.shape):
        raise ValueError(f"flip data for {name!r} does not match the layer's weights; "
                         f"{RECORD_HINT} for this model")
    return counts.double().cpu() / max(sensitivity.steps, 1)


@register_criterion
class WFF(Criterion):
    """Highest mean weight flipping frequency first (the paper's signal): importance = -WFF."""

    name = "wff"
    needs_flips = True

    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        if sensitivity is None:
            raise ValueError(f"criterion 'wff' needs flip data; {RECORD_HINT}")
        if group.fp_producer:  # mean WFF of the consumers' weights on each input channel
            return -_pooled_filter_mean(
                model, group, lambda name, m: _flip_frequency(sensitivity, name, m))
        missing = [n for n in group.binary if n not in sensitivity.channel_scores]
        if missing:
            raise ValueError(
                f"flip data does not match the model's binary layers (missing {missing}); "
                f"{RECORD_HINT} for this model"
            )

        def per_weight(name: str, m: nn.Module) -> torch.Tensor:
            score = sensitivity.channel_scores[name].double()
            if score.shape != (m.weight.shape[0],):
                raise ValueError(f"flip data for {name!r} does not match the layer's channels")
            return score[:, None].expand(-1, m.weight[0].numel())

        return -_pooled_filter_mean(model, group, per_weight)


@register_criterion
class Magnitude(Criterion):
    """Smallest mean |latent weight| first: importance = mean |w| of the channel's filters."""

    name = "magnitude"

    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        return _pooled_filter_mean(model, group, lambda _, m: m.weight.abs())


@register_criterion
class FlipMagnitude(Criterion):
    """Smallest mean |latent w| / (1 + flips) first: magnitude discounted by flip count.

    The form FlipOut uses for full-precision nets; it asks whether flips add anything to
    latent magnitude (weights near zero flip most, so the two signals are correlated).
    """

    name = "flip_magnitude"
    needs_flips = True

    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        if sensitivity is None or sensitivity.counts is None:
            raise ValueError(f"criterion 'flip_magnitude' needs flip data; {RECORD_HINT}")

        def per_weight(name: str, m: nn.Module) -> torch.Tensor:
            counts = sensitivity.counts.get(name)
            if counts is None or counts.shape != m.weight.shape:
                raise ValueError(f"flip data for {name!r} does not match the layer's weights")
            return m.weight.abs().double().cpu() / (1.0 + counts.double().cpu())

        return _pooled_filter_mean(model, group, per_weight)


@register_criterion
class BNScale(Criterion):
    """Smallest |gamma| of the batch norms that follow the group's layers first."""

    name = "bn_scale"

    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        gammas = []
        for name in group.norms:
            bn = model.get_submodule(name)
            if bn.affine:
                gammas.append(bn.weight.detach().abs().double().cpu())
        if not gammas:
            raise ValueError(
                f"criterion 'bn_scale' needs an affine BatchNorm after {group.name!r}; "
                "choose another criterion"
            )
        return torch.stack(gammas).mean(dim=0)


@register_criterion
class Random(Criterion):
    """Uniformly random channels; reproducible from ``seed`` (per group, order-independent)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def importance(
        self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
    ) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed ^ zlib.crc32(group.name.encode()))
        return -torch.rand(group.channels, generator=gen, dtype=torch.float64)
