"""Shared set-up of the ablation entry points: basis maps and the :class:`Ablator`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.basis import Basis
from ..core.graph import InteractionGraph
from ..core.inputs import Inputs
from ..core.nodes import OutputFn
from ..core.progress import Callback
from .forward import Ablator
from .loss import Loss, LossFn
from .maps import LayerMap


def graph_ablator(model: nn.Module, inputs: Inputs, graph: InteractionGraph, *,
                  loss: str | LossFn | Loss, output_fn: OutputFn | None, batch_size: int,
                  device: str | torch.device, dtype: torch.dtype, progress: bool,
                  callback: Callback | None) -> Ablator:
    """An :class:`Ablator` at every node layer of ``graph``."""
    if not isinstance(graph, InteractionGraph):
        raise TypeError(f"graph must be an InteractionGraph, got {type(graph).__name__}")
    maps = {n: LayerMap.from_graph(graph, n) for n in graph.layers}
    return Ablator(model, inputs, maps, loss=loss, output_fn=output_fn,
                   include_bias=bool(graph.metadata.get("include_bias", True)), batch_size=batch_size,
                   device=device, dtype=dtype, progress=progress, callback=callback)


def layer_map(basis: Basis | InteractionGraph, layer: str) -> tuple[LayerMap, str, bool]:
    """(map, basis kind, include_bias) of one layer of a Basis or a graph."""
    if isinstance(basis, Basis):
        if layer not in basis.layers:
            raise ValueError(f"layer {layer!r} is not in the basis; layers: {basis.layers}")
        return LayerMap.from_basis(basis[layer]), basis.options["kind"], basis.options["include_bias"]
    if isinstance(basis, InteractionGraph):
        if layer not in basis.layers:
            raise ValueError(f"layer {layer!r} is not in the graph; layers: {basis.layers}")
        meta = basis.metadata
        return LayerMap.from_graph(basis, layer), meta.get("kind", "interaction"), bool(meta.get("include_bias", True))
    raise TypeError(f"basis must be a Basis (compute_basis) or an InteractionGraph, got {type(basis).__name__}")


def options(kw: dict[str, Any]) -> dict[str, Any]:
    """The run options every entry point accepts, with their defaults."""
    allowed = {"output_fn": None, "batch_size": 4096, "device": "auto", "dtype": torch.float64,
               "progress": True, "callback": None}
    unknown = set(kw) - set(allowed)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {**allowed, **kw}
