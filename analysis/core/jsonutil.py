"""One JSON encoder for everything intermod writes (results, metadata, reports)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def json_default(obj: Any) -> Any:
    """``json.dumps(default=…)``: numpy scalars and arrays, sets and tuples, dataclasses; any
    other value (torch dtypes, devices, …) as its string."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return str(obj)


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, default=json_default, indent=indent)


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON types (dict keys as strings)."""
    return json.loads(dumps(obj))
