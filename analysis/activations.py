"""Activations at node layers for plain tensor inputs (forward pre-hooks, no gradients).

A node layer is a module path, whose *input* is the cut point, or ``"output"`` (the model's
output), as in :func:`intermod.analysis.compute_basis`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["layer_activations"]


@torch.no_grad()
def layer_activations(
    model: nn.Module, inputs: torch.Tensor, layers: Sequence[str], batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Activations at the node layers: layer -> float64 array (n, d_l).

    A layer is a module path (its *input* is the cut point) or ``"output"``.
    """
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        if name == "output":
            continue
        module = model.get_submodule(name)

        def hook(_mod: nn.Module, args: tuple, _name: str = name) -> None:
            captured[_name].append(args[0].detach().reshape(args[0].shape[0], -1))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        for start in range(0, inputs.shape[0], batch_size):
            out = model(inputs[start : start + batch_size])
            if "output" in captured:
                captured["output"].append(out.detach().reshape(out.shape[0], -1))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).double().cpu().numpy() for name, parts in captured.items()}
