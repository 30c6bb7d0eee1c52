"""The mode every pass of intermod runs a model in: :func:`eval_mode`."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode (samples must not interact), attention on the math SDPA backend and without
    nn.MultiheadAttention's fused fast path: the fused kernels support neither forward-mode AD
    nor fast batched (vmap) backward passes. Everything is restored after."""
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
