"""Channel counts of an engine program's values as functions of the pruning groups' cuts.

The planners that predict a cost from the engine's program (latency tables, C footprint,
microcontroller instruction counts) follow every program value's channel count back to the
pruning groups: a conv's output channels are its group's; pooling, sign, BN, adds keep their
input's; a concatenation sums its inputs'. An :data:`Expr` ``(base, ((group, coef), ...))``
stands for ``base - sum(coef * removed[group])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bnnprune.engine.compile import compile_model
from bnnprune.engine.latency import CONV_KINDS
from bnnprune.prune.graph import InputShape, PruningSpace

__all__ = ["Expr", "channels_at", "compile_eval", "op_expressions", "value_expressions"]

Expr = tuple[int, tuple[tuple[int, int], ...]]  # channels = base - sum(coef * removed[group])


def channels_at(expr: Expr, removed: Sequence[int]) -> int:
    """The channels of ``expr`` after cutting ``removed[g]`` channels from each group g."""
    base, terms = expr
    return base - sum(c * removed[g] for g, c in terms)


def op_expressions(space: PruningSpace, program: Any) -> tuple[list[Expr], list[Expr]]:
    """Channel expressions of every op's input and output (checked against the program)."""
    index = {g.name: i for i, g in enumerate(space.groups)}
    group_of = {layer: index[g.name] for layer, g in space.group_of().items()}
    value: dict[int, Expr] = {0: (program.values[0].c, ())}
    ins, outs = [], []
    for op in program.ops:
        first = value[op.inputs[0]]
        c = program.values[op.output].c
        if op.kind in CONV_KINDS:
            gi = group_of.get(op.name)
            out: Expr = (c, () if gi is None else ((gi, 1),))
        elif op.kind in ("concat", "concat_bits"):
            terms: dict[int, int] = {}
            for i in op.inputs:
                for g, k in value[i][1]:
                    terms[g] = terms.get(g, 0) + k
            out = (sum(value[i][0] for i in op.inputs), tuple(sorted(terms.items())))
        else:
            out = first
        if out[0] != c:
            raise ValueError(f"cannot model the cost of op {op.name or op.kind!r}: its "
                             "channels do not follow the pruning groups")
        value[op.output] = out
        ins.append(first if op.kind not in ("concat", "concat_bits") else out)
        outs.append(out)
    return ins, outs


def value_expressions(space: PruningSpace, program: Any) -> list[Expr]:
    """Channel expression of every program value (the input's: constant)."""
    _, outs = op_expressions(space, program)
    value_expr: list[Expr] = [(program.values[0].c, ())] * len(program.values)
    for op, e in zip(program.ops, outs, strict=True):
        value_expr[op.output] = e
    return value_expr


def compile_eval(model: nn.Module, input_shape: InputShape) -> Any:
    """The engine program of ``model`` in eval mode (its mode is restored). Compiling starts
    numba's OpenMP threads, which resets the OpenMP thread count PyTorch shares (e.g. set by
    OMP_NUM_THREADS); PyTorch's count is restored for the training that follows."""
    was_training, threads = model.training, torch.get_num_threads()
    try:
        return compile_model(model.eval(), input_shape)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
