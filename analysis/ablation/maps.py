"""The basis map of one node layer, as ablations use it: f ↦ f̂ and back.

With the *origin* b of a layer (the point whose data coordinates are all 0: b = (μ, 1) with
``center`` and ``include_bias``, μ with ``center`` alone, 0 without ``center``),

    f̂ = Cᵀ (f_aug − b)            (k,)   the interaction-basis coordinates, constant one = 0
    f_aug′ = b + C⁻¹ (m ⊙ f̂)      (d [+1],)  the activation with the directions m = 0 ablated

so "ablated" means "at its mean" with ``center``, and the constant direction (index 0 when
``bias_direction``) is carried by b: it is never ablated. With m = 1 this is the projection
onto the kept basis (exact without truncation). Only the data rows of f_aug′ are written back
into the model; its biases always run at their own value (slot = 1), which is the same thing
whenever the basis has a constant direction. The activation is read as samples, and written
back, in the layout the basis was built with (:class:`~intermod.analysis.core.layout.Layout`:
a conv map is channels at positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.basis import LayerBasis
from ..core.graph import InteractionGraph
from ..core.layout import Layout


@dataclass(frozen=True, eq=False)
class LayerMap:
    """C, C⁻¹: (d [+1], k); origin b: (d [+1],); Lambda: (k,); layout: the name of the layout
    the layer's activations are read in (``"features"``, ``"tokens"``, ``"channels"``, …)."""

    name: str
    dim: int
    C: np.ndarray
    Cinv: np.ndarray
    origin: np.ndarray
    Lambda: np.ndarray
    bias_direction: bool
    layout: str = "features"

    @property
    def k(self) -> int:
        return int(self.C.shape[1])

    @property
    def unanchored(self) -> bool:
        """The basis has the bias slot but no constant direction (built without ``center``):
        an ablated direction then moves the slot row of f_aug′, which is not written back."""
        return self.C.shape[0] == self.dim + 1 and not self.bias_direction

    @property
    def data_directions(self) -> np.ndarray:
        """Indices of the directions that can be ablated (all but the constant one)."""
        return np.arange(int(self.bias_direction), self.k)

    @classmethod
    def build(cls, name: str, C: np.ndarray, Cinv: np.ndarray, mean: np.ndarray, Lambda: np.ndarray,
              *, center: bool, include_bias: bool, bias_direction: bool,
              layout: str = "features") -> LayerMap:
        C, Cinv = np.asarray(C, dtype=np.float64), np.asarray(Cinv, dtype=np.float64)
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        d = mean.shape[0]
        if C.shape != Cinv.shape or C.shape[0] != d + int(include_bias):
            raise ValueError(f"layer {name!r}: C {C.shape} and C⁻¹ {Cinv.shape} do not fit "
                             f"{d} features{' + the bias slot' if include_bias else ''}")
        origin = np.zeros(C.shape[0])
        if center:
            origin[:d] = mean
        if center and include_bias:
            origin[d] = 1.0
        return cls(name, d, C, Cinv, origin, np.asarray(Lambda, dtype=np.float64), bool(bias_direction),
                   Layout(layout).kind)

    @classmethod
    def from_basis(cls, lb: LayerBasis) -> LayerMap:
        return cls.build(lb.name, lb.C, lb.Cinv, lb.mean, lb.Lambda, center=lb.center,
                         include_bias=lb.include_bias, bias_direction=lb.bias_direction,
                         layout=lb.layout)

    @classmethod
    def from_graph(cls, graph: InteractionGraph, layer: str) -> LayerMap:
        if layer not in graph.bases or layer not in graph.inverses or layer not in graph.means:
            raise ValueError(f"graph layer {layer!r} has no stored basis map (C, C⁻¹ and mean): "
                             "rebuild the graph with build_graph (files written before ablations "
                             "existed lack C⁻¹)")
        C, lam = graph.bases[layer]
        meta = graph.metadata
        start = graph.node_offset[layer]
        bias_dir = bool(graph.layer_sizes[layer] and graph.is_bias[start])
        return cls.build(layer, C, graph.inverses[layer], graph.means[layer], lam,
                         center=bool(meta.get("center", True)),
                         include_bias=bool(meta.get("include_bias", True)), bias_direction=bias_dir,
                         layout=(meta.get("layout") or {}).get(layer, "features"))   # older files: none


class TorchMap:
    """A :class:`LayerMap` on a device: ``coords`` f (…, d) -> f̂ (…, k) and ``back`` f̂ -> f;
    ``samples`` reads the activation as its (B, P, d) samples."""

    def __init__(self, lm: LayerMap, device: torch.device, dtype: torch.dtype):
        d = lm.dim
        self.layout = Layout(lm.layout)
        C = torch.as_tensor(lm.C, device=device)
        b = torch.as_tensor(lm.origin, device=device)
        self.k, self.dim = lm.k, d
        self.A = C[:d].to(dtype)                                     # (d, k)
        shift = -(b[:d] @ C[:d])
        if C.shape[0] > d:                                           # the slot (= 1) row
            shift = shift + (1.0 - b[d]) * C[d]
        self.shift = shift.to(dtype)                                 # (k,)
        self.B = torch.as_tensor(lm.Cinv[:d].T, device=device).to(dtype)   # (k, d)
        self.b = b[:d].to(dtype)

    def fold_head(self, W: Tensor, bias: Tensor | None) -> None:
        """For a node layer that is the input of a Linear z = W f + bias: z of the written-back
        f is ``head_out(h) = z0 + h @ WB`` with z0 = W b + bias and WB = (W C⁻¹)ᵀ (k, d_out):
        one matmul instead of two, and the copies never materialise f (same numbers,
        reassociated)."""
        W = W.to(self.B.dtype)
        self.WB = self.B @ W.T
        self.z0 = W @ self.b + (0 if bias is None else bias.to(self.B.dtype))

    def head_out(self, h: Tensor) -> Tensor:
        return h @ self.WB + self.z0

    def coords(self, f: Tensor) -> Tensor:
        return f @ self.A + self.shift

    def back(self, h: Tensor) -> Tensor:
        return h @ self.B + self.b

    def samples(self, x: Tensor) -> Tensor:
        """The activation x (B, *shape) as (B, P, d) samples in the layer's layout (every
        position counts)."""
        return self.layout.to_samples(x)
