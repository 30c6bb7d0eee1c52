"""Activations at node layers, through the same cut points as every other computation.

A node layer is a module path, whose *input* is the cut point, or ``"output"`` (the model's
output), as in :func:`intermod.analysis.compute_basis`. Activations come from
:meth:`NodeModel.forward <intermod.analysis.core.nodes.NodeModel.forward>` in float64, eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .inputs import Inputs, batch_to, iter_batches
from .nodes import NodeModel

__all__ = ["layer_activations", "node_activations"]


@torch.no_grad()
def node_activations(model: nn.Module, inputs: Inputs, layers: Sequence[str],
                     batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Activations at the node layers, layer -> float64 tensor (n, …, d_l), on the CPU."""
    device, dtype = torch.device("cpu"), torch.float64
    batches = [batch_to(b, device, dtype) for b in iter_batches(inputs, batch_size)]
    if not batches:
        raise ValueError("inputs: no data")
    net = NodeModel(model, layers, batches[0], output_fn=None, include_bias=False,
                    dtype=dtype, device=device)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for batch in batches:
        acts = net.forward(batch)
        for name in layers:
            parts[name].append(acts[name])
    return {name: torch.cat(p) for name, p in parts.items()}


def layer_activations(model: nn.Module, inputs: Inputs, layers: Sequence[str],
                      batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Activations at the node layers, flattened per sample: layer -> float64 array (n, ·)."""
    acts = node_activations(model, inputs, layers, batch_size)
    return {name: a.reshape(a.shape[0], -1).numpy() for name, a in acts.items()}
