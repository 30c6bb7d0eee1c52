"""Activation layout: how a node layer's tensor is read as samples × features, and back.

Every (input, position) pair of a node layer is a sample of G and M (docs/design.md §1). A layout
says which axes of the activation are positions and which one holds the features:

====================  ====================  ============================================
layout                activation            samples (B, P, d)
====================  ====================  ============================================
``"features"``        (B, d) or (B,)        P = 1 (a (B,) tensor has d = 1)
``"tokens"``          (B, P1, …, d)         P = P1·…, features last (sequence models)
``"channels"``        (B, C, S1, …)         C features at S1·… positions (conv maps)
``"flatten"``         (B, …)                every coordinate a feature, P = 1
====================  ====================  ============================================

Conv feature maps (B, C, H, W) are ``"channels"``: weight sharing makes spatial positions the
analogue of tokens, so a layer of C channels has C features. ``"flatten"`` (C·H·W features at
one position) is the per-layer override for a map that should be read as one vector.

Choosing the layout (:func:`resolve_layout`). An explicit ``layout=`` wins. A 2-d activation is
``"features"``. Otherwise the modules around the cut decide: the module that *reads* the tensor
(the cut module itself, or the first layer module that receives the tensor when the cut module
is a container), else the module that produced it; a channels-first module (``nn.Conv*``,
batch norm, pooling, ...) means ``"channels"``, a features-last one (``nn.Linear``,
``nn.LayerNorm``, attention, ...) means ``"tokens"``. Without such a module: a model with no
channels-first module anywhere cannot hold a conv map, so ``"tokens"``; a tensor of 4 or more
dimensions is ``"channels"`` (PyTorch's NCHW convention); a 3-d tensor is ambiguous ((B, P, d)
or (B, C, L)) and is an error that says how to choose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LAYOUTS = ("features", "tokens", "channels", "flatten")
LayoutSpec = str | Mapping[str, str] | None

CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.LocalResponseNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd, nn.Upsample, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
FEATURES_LAST: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.LayerNorm, nn.RMSNorm, nn.MultiheadAttention,
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
    nn.TransformerDecoder, nn.RNNBase)


def module_layout(module: nn.Module) -> str | None:
    """``"channels"`` / ``"tokens"`` for a module that reads its input channels-first /
    features-last, None for one that does not say (activations, containers, custom modules)."""
    if isinstance(module, CHANNELS_FIRST):
        return "channels"
    if isinstance(module, FEATURES_LAST) or type(module).__name__ == "Conv1D":   # HF's GPT-2 Conv1D
        return "tokens"
    return None


@dataclass(frozen=True)
class Layout:
    """The layout of one node layer (``kind`` in :data:`LAYOUTS`).

    Maps between an activation (…, B, *shape) and its samples (…, B, P, d), with any number of
    leading axes (stacked cotangents): :meth:`to_samples`, :meth:`from_samples` (its inverse,
    e.g. to write masked coordinates back into the model) and :meth:`slot_shape` (the shape of
    one bias slot per sample, (B, *position axes)).
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.kind!r}")

    def to_samples(self, act: Tensor, ndim: int | None = None) -> Tensor:
        """(…, B, *shape) -> (…, B, P, d); ``ndim`` is the activation's own rank (B included),
        by default ``act.ndim`` (no leading axes)."""
        ndim = act.ndim if ndim is None else ndim
        lead = act.shape[:act.ndim - ndim]
        if ndim == 1:
            return act.reshape(lead + (act.shape[-1], 1, 1))
        B = act.shape[len(lead)]
        if self.kind == "channels" and ndim > 2:
            act = act.movedim(len(lead) + 1, -1)
        elif self.kind in ("flatten", "features"):
            return act.reshape(lead + (B, 1, -1))
        return act.reshape(lead + (B, -1, act.shape[-1]))

    def from_samples(self, x: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """The inverse of :meth:`to_samples`: samples (…, B, P, d) -> (…, *shape), ``shape`` the
        activation's shape (B included)."""
        shape = tuple(shape)
        lead = x.shape[:x.ndim - 3]
        if x.shape[-3:] != (shape[0], self.n_positions(shape), self.n_features(shape)):
            raise ValueError(f"samples of shape {tuple(x.shape[-3:])} do not fit an activation of "
                             f"shape {shape} in layout {self.kind!r}")
        if self.kind == "channels" and len(shape) > 2:
            moved = (shape[0],) + shape[2:] + (shape[1],)
            return x.reshape(lead + moved).movedim(-1, len(lead) + 1)
        return x.reshape(lead + shape)

    def n_features(self, shape: tuple[int, ...] | torch.Size) -> int:
        """d for an activation of ``shape`` (B included)."""
        if len(shape) == 1:
            return 1
        if self.kind in ("flatten", "features"):
            return math.prod(shape[1:])
        return shape[1] if self.kind == "channels" else shape[-1]

    def n_positions(self, shape: tuple[int, ...] | torch.Size) -> int:
        return math.prod(self.slot_shape(shape)[1:])

    def slot_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """(B, *position axes): one bias slot per sample."""
        shape = tuple(shape)
        if len(shape) <= 2 or self.kind in ("flatten", "features"):
            return shape[:1]
        return (shape[0],) + shape[2:] if self.kind == "channels" else shape[:-1]

    def weights(self, shape: tuple[int, ...] | torch.Size, mask: Tensor | None, dtype: torch.dtype,
                device: torch.device | str) -> Tensor:
        """(B, P) sample weights in {0, 1}: the position mask where the activation has exactly one
        position axis of the mask's length (a padded sequence), else ones."""
        pos = self.slot_shape(shape)
        if mask is not None and len(pos) == 2 and tuple(mask.shape) == pos:
            return mask.to(dtype=dtype, device=device)
        return torch.ones((shape[0], math.prod(pos[1:])), dtype=dtype, device=device)

    def samples(self, act: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(samples (B, P, d), weights (B, P)) of an activation."""
        return self.to_samples(act), self.weights(act.shape, mask, act.dtype, act.device)


def resolve_layout(name: str, shape: tuple[int, ...] | torch.Size, requested: str | None, *,
                   evidence: str | None, model_has_channels: bool) -> Layout:
    """The layout of node layer ``name`` (see the module docstring for the rules).

    ``evidence``: :func:`module_layout` of the module reading (else producing) the tensor;
    ``model_has_channels``: whether any module of the model is channels-first.
    """
    ndim = len(shape)
    if requested is not None:
        layout = Layout(requested)
        if layout.kind == "features" and ndim > 2:
            raise ValueError(f"layer {name!r}: layout 'features' needs a (batch, features) "
                             f"activation, got shape {tuple(shape)}; use 'flatten' to read every "
                             "coordinate as a feature")
        return layout
    if ndim <= 2:
        return Layout("features")
    if evidence is not None:
        return Layout(evidence)
    if not model_has_channels:
        return Layout("tokens")
    if ndim >= 4:
        return Layout("channels")
    raise ValueError(
        f"layer {name!r}: cannot tell the layout of a 3-d activation of shape {tuple(shape)}: it "
        f"may be (batch, positions, features) = {tuple(shape)} or (batch, channels, length) with "
        f"{shape[1]} channels, and no module around the cut says which; pass "
        f"layout={{{name!r}: 'tokens'}} (features last), 'channels' (conv map) or 'flatten' "
        f"({math.prod(shape[1:])} features)")


def requested_layouts(layout: LayoutSpec, layers: list[str]) -> dict[str, str | None]:
    """Normalise the ``layout=`` argument: one name for every layer, or layer -> name."""
    if layout is None:
        return {n: None for n in layers}
    if isinstance(layout, str):
        Layout(layout)
        return {n: layout for n in layers}
    if not isinstance(layout, Mapping):
        raise TypeError(f"layout must be a layout name or a mapping layer -> name, got {type(layout).__name__}")
    unknown = [n for n in layout if n not in layers]
    if unknown:
        raise ValueError(f"layout names layers {unknown} that are not node layers {layers}")
    for v in layout.values():
        Layout(v)
    return {n: layout.get(n) for n in layers}


def spread_slot(g: Tensor, w_in: Tensor) -> Tensor:
    """Carry slot derivatives (…, B, P_out) of the next node layer back to this one's (B, P_in).

    Bias attribution across a section (docs/models.md): when the number of positions does not
    change, the slot of position t drives position t; when it does (pooling, strided conv,
    flatten, a pooled classifier output), every bias downstream is driven by the *mean* slot
    s̄ = Σ_s w_s s_s / Σ_s w_s over this layer's valid positions (w_in (B, P_in) the sample
    weights), so by the chain rule position s receives w_s/Σw times the sum over t.
    """
    if g.shape[-1] == w_in.shape[-1]:
        return g
    share = w_in / w_in.sum(-1, keepdim=True).clamp_min(1.0)
    return g.sum(-1, keepdim=True) * share


def path_point(layout: Layout, point: Tensor, baseline: Tensor | None, alpha: float) -> Tensor:
    """The point at α of the integrated path: α·point with the slot (``baseline`` None: every
    input, the slot included, scaled), else baseline + α (point − baseline), the baseline (d,)
    on the layout's feature axis."""
    if baseline is None:
        return alpha * point
    return layout.from_samples(baseline + alpha * (layout.to_samples(point) - baseline), point.shape)
