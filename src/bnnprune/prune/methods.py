"""Pruning methods: a *policy* (how many channels each layer keeps) + a *criterion* (which).

A method has one spelling, ``policy+criterion`` (``target+wff``, ``uniform+magnitude``,
``paper+wff``), used in configs, folder names, records and reports alike. It declares the
data it needs, so a config can be refused before anything trains:

- ``flips``: per-weight flip counts of the pruning interval (``train.track_last >= 1``).
  The ``paper`` and ``target`` policies read p_l from them; ``wff`` and the combined
  criteria score channels with them.
- ``bn``: BatchNorm layers after the pruned layers (``bn_scale``).
- ``weights``: the latent weights (every criterion that reads |w|); always present.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnnprune.prune.criteria import CRITERIA
from bnnprune.prune.policies import POLICIES, Policy
from bnnprune.prune.selection import get_criterion
from bnnprune.prune.sensitivity import RECORD_HINT

__all__ = ["Method", "MethodError", "parse_method", "parse_methods"]


class MethodError(ValueError):
    """A method is misspelt, or the data it needs is missing."""


@dataclass(frozen=True)
class Method:
    """One pruning method: ``policy`` sizes the layers, ``criterion`` picks the channels.

    ``policy`` may be given by name; the method holds the registered policy object
    (:data:`~bnnprune.prune.policies.POLICIES`), which says what the policy takes and needs.
    """

    policy: Policy
    criterion: str

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            if self.policy not in POLICIES:
                raise MethodError(
                    f"unknown policy {self.policy!r} in method {self.spec!r}; "
                    f"choose from {', '.join(POLICIES)}"
                )
            object.__setattr__(self, "policy", POLICIES[self.policy])
        if self.criterion not in CRITERIA:  # tp:NAME or pkg.module:Class
            try:
                get_criterion(self.criterion)
            except ValueError as e:
                raise MethodError(f"method {self.spec!r}: {e}") from None

    @property
    def spec(self) -> str:
        """The one spelling: ``policy+criterion``."""
        return f"{self.policy}+{self.criterion}"

    def __str__(self) -> str:
        return self.spec

    @property
    def needs(self) -> frozenset[str]:
        crit = CRITERIA.get(self.criterion) or get_criterion(self.criterion)
        needs = set(self.policy.needs) | {"weights"}
        if getattr(crit, "needs_flips", False):
            needs.add("flips")
        needs |= set(getattr(crit, "needs", ()))
        return frozenset(needs)

    @property
    def needs_flips(self) -> bool:
        return "flips" in self.needs

    @property
    def needs_data(self) -> bool:
        """True when the criterion computes gradients on training batches (``tp:taylor``)."""
        return bool(get_criterion(self.criterion).needs_grads)

    def require(self, has_flips: bool, fix: str = RECORD_HINT) -> None:
        """Raise :class:`MethodError` when the method needs flip data that is not there."""
        if self.needs_flips and not has_flips:
            why = (f"the {self.policy} policy reads p_l from flip counts"
                   if self.policy.needs_flips
                   else f"criterion {self.criterion!r} scores channels by flip counts")
            raise MethodError(f"method {self.spec} needs flip data ({why}); {fix}")


def parse_method(text: str, default_criterion: str = "wff") -> Method:
    """Parse ``policy+criterion``; a bare policy takes ``default_criterion``, a bare
    criterion the ``target`` policy. Spaces around ``+`` are ignored."""
    if not isinstance(text, str) or not text.strip():
        raise MethodError(f"empty method {text!r}: write policy+criterion, e.g. target+wff")
    t = text.replace(" ", "")
    if "+" in t:
        policy, crit = t.split("+", 1)
    elif t in POLICIES:
        policy, crit = t, default_criterion
    elif t in CRITERIA or ":" in t:
        policy, crit = "target", t
    else:
        raise MethodError(
            f"unknown method {text!r}: write policy+criterion with policy in "
            f"{', '.join(POLICIES)} and criterion in {', '.join(sorted(CRITERIA))}"
        )
    return Method(policy, crit)


def parse_methods(items: list[str], default_criterion: str = "wff") -> list[Method]:
    """Parse a list of method specs, dropping repeats (first occurrence kept)."""
    out: list[Method] = []
    for item in items:
        m = parse_method(item, default_criterion)
        if m not in out:
            out.append(m)
    return out
