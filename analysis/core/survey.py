"""One plain forward pass that surveys a model's cut points before any analysis.

It records, for every node layer (a module path whose *input* is the cut): the order the
layers run in, their shapes, and the *layout evidence*
(:func:`~intermod.analysis.core.layout.module_layout` of the first layer module that reads the
tensor, else of the module that produced it; for the output, of its producer). It also records
which slot-candidate modules (:func:`~intermod.analysis.core.folding.slot_candidate`) are
called, on batch-first tensors: only those get bias-slot hooks, every other bias is folded
through forward-mode tangents.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .folding import slot_candidate
from .layout import module_layout

OUTPUT = "output"


@dataclass
class Survey:
    """order: node layers in forward order; shapes: layer -> activation shape (batch first);
    evidence: layer -> ``"channels"`` / ``"tokens"``; called: slot candidate -> whether every
    call of it returned a batch-first tensor."""

    order: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    called: dict[nn.Module, bool] = field(default_factory=dict)


def checked_layers(layers: Sequence[str], named: Mapping[str, nn.Module]) -> list[str]:
    """``layers`` as a list, or a ValueError that names the problem: not a non-empty list, a
    duplicate, a path that is not one of the model's modules (``named``; with the closest
    paths), or '' (the whole model)."""
    if isinstance(layers, str) or not layers:
        raise ValueError("layers must be a non-empty list of module paths (or 'output')")
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers contains duplicates: {layers}")
    for name in layers:
        if name != OUTPUT and name not in named:
            paths = [n for n in named if n]
            close = difflib.get_close_matches(name, paths, n=3)
            hint = f"; did you mean {close}?" if close else ""
            shown = ", ".join(repr(n) for n in paths[:50]) + (f", … ({len(paths)} in all)" if len(paths) > 50 else "")
            raise ValueError(f"unknown layer {name!r}: not a module path of the model{hint}; "
                             f"valid layers: {shown} and {OUTPUT!r}")
        if name == "":
            raise ValueError("layer '' is the whole model; use its first submodule or 'output'")
    return layers


def same_tensor(t: Any, x: Tensor) -> bool:
    """``t`` is ``x``, or a view of the same memory with the same shape and strides (a reshape
    or transpose is not: its axes mean something else)."""
    if not isinstance(t, Tensor):
        return False
    if t is x:
        return True
    shared = (t._base is not None and t._base is x) or (x._base is not None and x._base is t) or (
        x._base is not None and t._base is x._base)
    return shared and t.shape == x.shape and t.stride() == x.stride()


def survey(cuts: Mapping[str, nn.Module], modules: Iterable[nn.Module], run: Callable[[], Tensor],
           batch_size: int) -> Survey:
    """Run ``run()`` (a forward pass returning the behavioural output) with recording hooks on
    the cut modules ``cuts`` (layer -> module) and on ``modules`` (all of the model's)."""
    found = Survey()
    inputs: dict[str, Tensor] = {}
    readers: dict[str, str] = {}
    producers: dict[str, str] = {}
    produced: list[tuple[weakref.ref, str]] = []   # weak: a freed tensor is never matched

    def producer_of(x: Tensor) -> str | None:
        for ref, kind in reversed(produced):
            if same_tensor(ref(), x):
                return kind
        return None

    def make(name: str):
        def hook(module, args):
            if name in found.order:
                raise ValueError(f"layer {name!r} runs more than once in a forward pass; "
                                 "choose a cut point that is called once")
            found.order.append(name)
            inputs[name], found.shapes[name] = args[0], tuple(args[0].shape)
            if (kind := producer_of(args[0])) is not None:
                producers[name] = kind
        return hook

    def read(module, args):
        for name, x in inputs.items():
            if name not in readers and args and same_tensor(args[0], x):
                readers[name] = module_layout(module)

    def wrote(module, args, out):
        if (kind := module_layout(module)) is not None and isinstance(out, Tensor):
            produced.append((weakref.ref(out), kind))
        if slot_candidate(module):
            ok = isinstance(out, Tensor) and out.ndim > 0 and out.shape[0] == batch_size
            found.called[module] = found.called.get(module, True) and ok

    watched = [m for m in modules if module_layout(m) is not None or slot_candidate(m)]
    handles = [m.register_forward_pre_hook(make(n)) for n, m in cuts.items()]
    handles += [m.register_forward_pre_hook(read) for m in watched if module_layout(m) is not None]
    handles += [m.register_forward_hook(wrote) for m in watched]
    try:
        y = run()
    finally:
        for h in handles:
            h.remove()
    found.shapes[OUTPUT] = tuple(y.shape)
    found.evidence = producers | readers
    if (kind := producer_of(y)) is not None:
        found.evidence[OUTPUT] = kind
    return found
