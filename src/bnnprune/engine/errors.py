"""Exceptions raised by the packed inference engine."""

from __future__ import annotations

__all__ = ["BnnFormatError", "EngineError"]


class EngineError(ValueError):
    """A model, op or input that the engine cannot compile or run."""


class BnnFormatError(ValueError):
    """A ``.bnn`` file that is truncated, corrupted, inconsistent or of an unknown version."""
