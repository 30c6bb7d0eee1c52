"""How each node layer is consumed: the structure the free-direction counts assume.

A node layer l named by a module path is the *input* f^l of that module. When that module is
an ``nn.Linear`` (weight W^l: d_out × d_in, optional bias b^l) its output p^{l+1} = W^l f^l + b^l
either feeds a ReLU-like module (``nn.ReLU``/``LeakyReLU``/``PReLU``) whose output is the next
node layer, or is itself the next node layer or the model output. This is detected from one
traced forward pass (tensor identity), so any ``nn.Module`` with these pieces works; a node
layer consumed by anything else gets its spectra and ranks but no counts (``notes`` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.nodes import OUTPUT
from .synchrony import RELU_LIKE


@dataclass
class _Link:
    """How node layer ``layer`` is consumed: an nn.Linear ``consumer`` whose output goes
    through ReLU-like ``act`` (or not) to node layer ``next`` (or "output"/None)."""

    layer: str
    consumer: str | None = None
    linear: nn.Linear | None = None
    act: str | None = None
    next: str | None = None
    note: str | None = None


def _first_tensor(args: Any) -> Tensor | None:
    """A hook's tensor: ``args`` itself or its first element (None when there is none)."""
    if isinstance(args, Tensor):
        return args
    if isinstance(args, (tuple, list)) and args and isinstance(args[0], Tensor):
        return args[0]
    return None


def trace_structure(model: nn.Module, batch: Any, layers: Sequence[str],
                    output_fn: Callable[[Any], Tensor],
                    run: Callable[[Any], Any]) -> tuple[list[_Link], list[str]]:
    """One forward pass ``run(batch)`` of ``model`` with hooks on every module;
    returns the links of each node layer (in forward order) and the forward order of all module
    paths that ran. Links are found by tensor identity (the object a module returned is the
    object the next module received)."""
    modules = dict(model.named_modules())
    for name in layers:
        if name != OUTPUT and name not in modules:
            raise ValueError(f"layer {name!r} is not a module path of the model")
    seen_in: dict[str, Tensor] = {}
    seen_out: dict[str, Tensor] = {}
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def pre(name):
        def hook(mod, args, kwargs=None):
            calls[name] = calls.get(name, 0) + 1
            t = _first_tensor(args)
            if t is not None and name not in seen_in:
                seen_in[name] = t
                order.append(name)
        return hook

    def post(name):
        def hook(mod, args, out):
            t = _first_tensor(out)
            if t is not None and name not in seen_out:
                seen_out[name] = t
        return hook

    for name, mod in modules.items():
        if name == "":
            continue
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            out = output_fn(run(batch))
    finally:
        for h in handles:
            h.remove()

    def consumer_of(t: Tensor, kinds: tuple | None = None, among: Sequence[str] | None = None):
        names = among if among is not None else order
        for n in names:
            if n in seen_in and seen_in[n] is t and (kinds is None or isinstance(modules[n], kinds)):
                return n
        return None

    node_mods = [n for n in layers if n != OUTPUT]
    missing = [n for n in node_mods if n not in seen_in]
    if missing:
        raise ValueError(f"layers {missing} were not called with a tensor input in a forward pass")
    fwd = sorted(node_mods, key=order.index) + ([OUTPUT] if OUTPUT in layers else [])
    links = []
    for name in fwd:
        link = _Link(layer=name)
        if name != OUTPUT and calls.get(name, 0) > 1:
            link.note = (f"module {name!r} is called {calls[name]} times per forward pass (shared "
                         "weights): spectra only, no free-direction counts")
        elif name != OUTPUT and isinstance(modules[name], nn.Linear):
            link.consumer, link.linear = name, modules[name]
            z = seen_out.get(name)
            if z is not None:
                act = consumer_of(z, RELU_LIKE)
                if act is not None and calls.get(act, 0) > 1:
                    link.note = (f"ReLU-like module {act!r} is called {calls[act]} times per "
                                 "forward pass: give each use its own module to get counts")
                    links.append(link)
                    continue
                target = seen_out.get(act) if act is not None else z
                link.act = act
                nxt = consumer_of(target, among=node_mods)
                if nxt is not None:
                    link.next = nxt
                elif target is out:
                    link.next = OUTPUT
        links.append(link)
    return links, order
