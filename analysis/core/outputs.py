"""The behavioural output: which tensor of ``model(batch)`` the analysis differentiates.

``output_fn`` is a callable of the model's output, the name of a field or key of it
(``"logits"``, ``"last_hidden_state"``), or None for :func:`default_output`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

OutputFn = Callable[[Any], Tensor] | str


def default_output(out: Any) -> Tensor:
    """The model's output if it is a tensor, else its first tensor (e.g. ``last_hidden_state``)."""
    if isinstance(out, Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out
    if isinstance(values, (tuple, list)) or isinstance(out, Mapping):
        for v in values:
            if isinstance(v, Tensor):
                return v
    raise TypeError(f"cannot find an output tensor in a {type(out).__name__}; pass output_fn=")


def output_getter(output_fn: OutputFn | None) -> Callable[[Any], Tensor]:
    """The behavioural output as a function of the model's output: ``output_fn`` itself, the
    attribute or key it names (``"logits"``, ``"last_hidden_state"``), or :func:`default_output`."""
    if output_fn is None:
        return default_output
    if isinstance(output_fn, str):
        key = output_fn

        def get(out: Any) -> Tensor:
            if isinstance(out, Mapping) and key in out:
                value = out[key]
            elif not isinstance(out, (Tensor, Mapping)) and hasattr(out, key):
                value = getattr(out, key)
            else:
                have = list(out.keys()) if isinstance(out, Mapping) else type(out).__name__
                raise ValueError(f"output_fn={key!r}: the model's output has no field {key!r} ({have})")
            if not isinstance(value, Tensor):
                raise TypeError(f"output_fn={key!r}: the field is a {type(value).__name__}, not a tensor")
            return value
        return get
    if not callable(output_fn):
        raise TypeError(f"output_fn must be a callable or the name of an output field, got {type(output_fn).__name__}")
    return output_fn
