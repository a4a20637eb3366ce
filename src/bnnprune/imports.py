"""Objects named by an import path ``package.module:name`` (user criteria, model factories).

One resolver so every ``pkg.module:name`` setting reads, imports and fails the same way:
a one-line ValueError that says whether the module or the name is missing.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

__all__ = ["import_from_spec", "is_import_spec"]

_IDENT = r"[A-Za-z_]\w*"
_SPEC = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def is_import_spec(text: str) -> bool:
    """True when ``text`` has the form ``package.module:name`` (``:`` marks an import path)."""
    return ":" in text


def import_from_spec(spec: str, what: str) -> Any:
    """Import ``package.module`` and return its attribute ``name`` (dotted: ``Class.method``).

    ``what`` names the setting in messages ("model factory", "criterion"). Raises ValueError
    with one line when the spec is malformed, the module cannot be imported (missing, or its
    import fails) or lacks the name.
    """
    if not _SPEC.match(spec):
        raise ValueError(f"{what} {spec!r}: write an import path as pkg.module:name")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise ValueError(
                f"cannot import {what} {spec!r}: no module named {e.name!r} on the Python "
                "path (install it, or add its folder to PYTHONPATH)"
            ) from e
        raise ValueError(f"cannot import {what} {spec!r}: importing {module_name} failed: "
                         f"{e}") from e
    except Exception as e:  # the module's own code failed while importing
        raise ValueError(f"cannot import {what} {spec!r}: importing {module_name} failed: "
                         f"{type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"cannot import {what} {spec!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    return obj
