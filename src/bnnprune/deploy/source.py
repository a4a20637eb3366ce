"""One way from what a user holds to an engine program: a ``.bnn`` file, a ``model.pt``
checkpoint, a PyTorch model or a :class:`~bnnprune.engine.Program`.

Checkpoints are read by :mod:`bnnprune.checkpoint` (safe loading, model rebuilt from its
spec), never through the training package, so deploying needs none of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnnprune.checkpoint import CheckpointError, load_model, recorded_input_shape
from bnnprune.engine import BnnFormatError, EngineError, Program, as_program, load
from bnnprune.engine.fileformat import MAGIC

__all__ = ["Deployable", "from_checkpoint", "is_bnn_file", "load_deployable", "load_program"]

Source = Program | nn.Module | str | os.PathLike[str]


@dataclass
class Deployable:
    """A network ready for the deploy targets: its input shape, the PyTorch model it came
    from (None for a program or a ``.bnn`` file) and its program, compiled on first use
    (ONNX needs only the model)."""

    input_shape: tuple[int, int, int]
    model: nn.Module | None = None
    name: str = "the model"  # how messages name it: its file, when it has one
    checkpoint: dict[str, Any] | None = None
    _program: Program | None = field(default=None, repr=False)

    @property
    def program(self) -> Program:
        """The engine program (:class:`~bnnprune.engine.EngineError` if it cannot compile)."""
        if self._program is None:
            self._program = as_program(self.model, self.input_shape)
        return self._program

    def float_bytes(self) -> int | None:
        """Bytes of the model's float32 weights (None without a model): what a file saves."""
        if self.model is None:
            return None
        return 4 * sum(t.numel() for t in self.model.state_dict().values()
                       if t.is_floating_point())


def is_bnn_file(path: str | os.PathLike[str]) -> bool:
    """A packed engine program: named .bnn, or starting with the .bnn magic (whatever its
    name); anything else is taken for a model.pt checkpoint."""
    if str(path).endswith(".bnn"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def from_checkpoint(path: str | os.PathLike[str]) -> Deployable:
    """The model a ``model.pt`` checkpoint stores, with the input shape it records;
    :class:`~bnnprune.checkpoint.CheckpointError` (one line) on any fault."""
    model, ckpt = load_model(path)
    shape = recorded_input_shape(ckpt)
    if len(shape) != 3:
        raise CheckpointError(f"{path} does not record its input shape")
    return Deployable(shape, model, str(path), ckpt)  # type: ignore[arg-type]


def load_deployable(source: Source, input_shape: tuple[int, int, int] | None = None
                    ) -> Deployable:
    """``source`` ready to deploy: a checkpoint or ``.bnn`` path (a faulty file raises a
    one-line error naming it), a PyTorch model (compiled now, for ``input_shape``) or a
    program. A given ``input_shape`` must be the source's."""
    if isinstance(source, nn.Module | Program):
        program = as_program(source, input_shape)
        model = source if isinstance(source, nn.Module) else None
        return Deployable(program.input_shape, model, _program=program)
    if is_bnn_file(source):
        try:
            program = load(source)
        except BnnFormatError as e:
            raise BnnFormatError(f"{source}: {e}") from None
        found = Deployable(program.input_shape, name=str(source), _program=program)
    else:
        found = from_checkpoint(source)
    if input_shape is not None and tuple(input_shape) != found.input_shape:
        raise EngineError(f"input_shape {tuple(input_shape)} differs from {found.name}'s "
                          f"{found.input_shape}")
    return found


def load_program(source: Source, input_shape: tuple[int, int, int] | None = None) -> Program:
    """The engine program of a checkpoint, a ``.bnn`` file, a PyTorch model or a program."""
    return load_deployable(source, input_shape).program
