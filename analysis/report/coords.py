"""Interaction-basis coordinates of a node layer, from the C a graph carries.

An :class:`~intermod.analysis.core.graph.InteractionGraph` built by ``build_graph`` stores every
layer's C (d [+1], k) in ``graph.bases``; f̂ = Cᵀ f_aug with f_aug = [f, 1] (bias slot), f − μ
(centred, no slot) or f, exactly as :meth:`LayerBasis.transform
<intermod.analysis.core.basis.LayerBasis.transform>`, here on torch tensors so that f̂ can be
differentiated and computed batch by batch, on the device the report runs on (``device=``:
"auto" = CUDA when available, else the CPU, as every entry point). Everything is float64 there;
results come back as CPU numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..core.graph import InteractionGraph
from ..core.inputs import Batch, Inputs, batch_to, iter_batches, position_mask, resolve_device
from ..core.nodes import NodeModel, OutputFn

__all__ = ["Batches", "LayerCoordinates", "layer_coordinates", "layer_means", "setup"]


@dataclass(frozen=True)
class LayerCoordinates:
    """f ↦ f̂ for one node layer. C: (d [+1], k); slot: C has the bias-slot row; mean: (d,) the
    offset subtracted without a slot (zeros when uncentred)."""

    layer: str
    C: Tensor
    slot: bool
    mean: Tensor

    @property
    def dim(self) -> int:
        return self.C.shape[0] - int(self.slot)

    def __call__(self, f: Tensor, columns: Tensor | None = None) -> Tensor:
        """f (…, d) -> f̂ (…, k), or only the ``columns`` of f̂."""
        if f.shape[-1] != self.dim:
            raise ValueError(f"layer {self.layer!r}: activations of size {f.shape[-1]}, the basis has {self.dim}")
        C = self.C if columns is None else self.C[:, columns]
        out = (f - self.mean) @ C[:self.dim]
        return out + C[self.dim] if self.slot else out


def layer_coordinates(graph: InteractionGraph, layer: str, dim: int, mean: np.ndarray | None = None, *,
                      device: torch.device) -> LayerCoordinates:
    """The coordinates of ``layer`` (activation size ``dim``), C (d [+1], k) and the offset (d,)
    float64 on ``device``; ``mean`` (d,) is needed only for a centred basis without a bias slot
    (``graph.metadata["center"]``)."""
    if layer not in graph.bases:
        raise ValueError(f"the graph carries no basis for layer {layer!r}: build it with build_graph "
                         "(a graph saved without bases cannot be mapped back to activations)")
    C = torch.as_tensor(np.asarray(graph.bases[layer][0]), dtype=torch.float64, device=device)
    if C.shape[0] not in (dim, dim + 1):
        raise ValueError(f"layer {layer!r}: C has {C.shape[0]} rows, activations have {dim} features")
    slot = C.shape[0] == dim + 1
    centred = bool(graph.metadata.get("center", False)) and not slot
    if centred and mean is None:
        raise ValueError(f"layer {layer!r}: a centred basis without a bias slot needs the data mean")
    offset = (torch.as_tensor(np.asarray(mean), dtype=torch.float64, device=device) if centred
              else torch.zeros(dim, dtype=torch.float64, device=device))
    return LayerCoordinates(layer, C, slot, offset)


class Batches:
    """Re-iterable batches of ``inputs`` in ``dtype`` on ``device`` (streamed, never all in
    memory; floating tensors cast, integer token ids kept)."""

    def __init__(self, inputs: Inputs, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float64):
        self.inputs, self.batch_size, self.device, self.dtype = inputs, batch_size, device, dtype

    def __iter__(self) -> Iterator[Batch]:
        for b in iter_batches(self.inputs, self.batch_size):
            yield batch_to(b, self.device, self.dtype)


def setup(model: nn.Module, inputs: Inputs, graph: InteractionGraph, layers: Sequence[str], *,
          output_fn: OutputFn | None, batch_size: int, device: str | torch.device = "auto",
          dtype: torch.dtype = torch.float64) -> tuple[NodeModel, Batches, dict[str, LayerCoordinates]]:
    """The model cut at the graph's node layers (``dtype`` copies of its parameters on ``device``
    (:func:`~intermod.analysis.core.inputs.resolve_device`), no bias slot: plain activations;
    the model itself is neither moved nor changed), the batches on that device in ``dtype``, and
    the coordinates of ``layers`` there (float64: f̂ of a float32 activation is computed in
    float64). A centred basis without a slot subtracts the basis's mean
    μ: the graph's stored ``means`` where it has them, else the mean over ``inputs``."""
    dev = resolve_device(device)
    batches = Batches(inputs, batch_size, dev, dtype)
    first = next(iter(batches), None)
    if first is None:
        raise ValueError("inputs: no data")
    net = NodeModel(model, graph.layers, first, output_fn=output_fn, include_bias=False,
                    dtype=dtype, device=dev, layout=graph.metadata.get("layout"))
    means = {}
    if graph.metadata.get("center"):
        stored = getattr(graph, "means", None) or {}
        missing = [name for name in layers if name not in stored and name in graph.bases
                   and np.shape(graph.bases[name][0])[0] == net.dims[name]]   # no slot row
        means = {**{name: stored[name] for name in layers if name in stored},
                 **(layer_means(net, batches, missing) if missing else {})}
    return net, batches, {name: layer_coordinates(graph, name, net.dims[name], means.get(name), device=dev)
                          for name in layers}


def layer_means(net: NodeModel, batches: Iterable[Batch], layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean activation μ = Σ_(x,t) w f / Σ w (d,) of each node layer over all (input, position)
    samples, on the node model's device (``net.device``, where each batch is moved), summed in
    float64 there; returned as CPU numpy arrays."""
    sums: dict[str, Tensor] = {}
    count: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            batch = batch_to(batch, net.device, net.dtype)
            acts = net.forward(batch)
            mask = position_mask(batch)
            for name in layers:
                x, w = net.layouts[name].samples(acts[name], mask)
                sums[name] = sums.get(name, 0) + (x * w[..., None]).sum((0, 1), dtype=torch.float64)
                count[name] = count.get(name, 0.0) + float(w.sum())
    return {name: (sums[name] / max(count[name], 1.0)).cpu().numpy() for name in layers}
