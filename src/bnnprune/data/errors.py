"""The one error type of the data package."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset is missing, corrupt, refused (unsafe pickle) or asked for in a bad way.

    Messages are single lines that name the file at fault and, for a missing dataset,
    say how to get it, so the CLI can show them as they are.
    """


def one_line(exc: BaseException) -> str:
    """Render an exception as a single line, so wrapped messages stay one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
