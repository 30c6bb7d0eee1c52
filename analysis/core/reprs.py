"""Short ``repr`` of result objects: arrays and long containers summarised, never dumped.

A dataclass with ``__repr__ = summary_repr`` prints as ``Name(field=value, …)`` where an
array is ``array(shape=…, dtype=…)`` (its values when it has at most ``SHOW`` entries), a list or
dict longer than ``SHOW`` is its length, nested dataclasses print their scalar fields only,
and strings are cut at ``MAX_TEXT`` characters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SHOW = 6
MAX_TEXT = 60


def short(value: Any, depth: int = 0) -> str:
    """A bounded one-line description of `value`."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and not np.isscalar(value):
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if arr.size <= SHOW and arr.ndim <= 1:
            return np.array2string(arr, precision=4, separator=", ")
        return f"array(shape={tuple(arr.shape)}, dtype={arr.dtype})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if depth > 0:
            scalars = [f"{f.name}={short(getattr(value, f.name), depth + 1)}"
                       for f in dataclasses.fields(value)
                       if isinstance(getattr(value, f.name), (int, float, str, bool))][:SHOW]
            return f"{type(value).__name__}({', '.join(scalars)}{', …' if scalars else '…'})"
        return summary_repr(value)
    if isinstance(value, (list, tuple)):
        if len(value) > SHOW or depth > 1:
            return f"[{len(value)} items]"
        return "[" + ", ".join(short(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        if len(value) > SHOW or depth > 1:
            return f"{{{len(value)} entries}}"
        return "{" + ", ".join(f"{k!r}: {short(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = repr(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def summary_repr(self: Any) -> str:
    """``__repr__`` for result dataclasses (see the module docstring)."""
    parts = [f"{f.name}={short(getattr(self, f.name), 1)}" for f in dataclasses.fields(self)
             if f.repr]
    return f"{type(self).__name__}({', '.join(parts)})"
