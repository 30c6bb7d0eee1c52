"""Bias folding: which parameters are biases and how a forward hook scales one by the slot.

With ``include_bias`` every bias b of a section is scaled by the bias slot s of its input
(docs/design.md §1). A hook adds (s − 1)·b to a module's output, which leaves the value unchanged
and makes ∂/∂s the bias; see :class:`~intermod.analysis.core.nodes.NodeModel` for the
attribution rule and :func:`~intermod.analysis.core.layout.spread_slot`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layout import CHANNELS_FIRST


def is_bias(name: str) -> bool:
    """A bias parameter by its name: ``bias``, ``*_bias`` (``in_proj_bias``), or TransformerLens's
    ``b`` / ``b_*`` (``b_Q``, ``b_in``, ``b_U``, ...)."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("bias", "b") or leaf.endswith("_bias") or leaf.startswith("b_")


def channels_bias(module: nn.Module) -> bool:
    """Whether the module adds its bias along dim 1 of a channels-first map (else: last dim)."""
    return isinstance(module, CHANNELS_FIRST)


def slot_candidate(module: nn.Module) -> bool:
    """Modules whose bias a forward hook can scale by the slot: a 1-d bias on a known axis."""
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1 and module.bias is not None
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
        return getattr(module, "bias", None) is not None
    return False


def add_slot_bias(module: nn.Module, out: Tensor, bias: Tensor, slot: Tensor, share: Tensor) -> Tensor:
    """out + (s − 1)·b for a slot-candidate module's output.

    slot, share: (B, *positions) of the section's input. Where the module's positions (the
    non-feature axes of ``out``) are the slot's, s = slot (per position); otherwise s is the
    mean slot Σ_p share_p · slot_p, one per sample. b lies on the last axis (Linear, LayerNorm)
    or on axis 1 (Conv, BatchNorm).
    """
    channels = channels_bias(module)
    pos = (out.shape[:1] + out.shape[2:]) if channels else out.shape[:-1]
    s = slot if pos == slot.shape else (slot * share).reshape(slot.shape[0], -1).sum(1).reshape((-1,) + (1,) * (len(pos) - 1))
    if channels:
        return out + (s - 1)[:, None] * bias.reshape((-1,) + (1,) * (out.ndim - 2))
    return out + (s - 1)[..., None] * bias
