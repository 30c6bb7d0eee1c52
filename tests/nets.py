"""Small test networks shared by several test files."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def pooled_cnn(channels: tuple[int, int, int], flat: int, hidden: int, out: int) -> nn.Sequential:
    """conv1 3×3 → relu1 → pool1 (max 2) → conv2 3×3 → relu2 → pool2 → flatten → fc1 → tanh →
    fc2, float64, seeded (``torch.manual_seed(0)``). channels: (in, conv1, conv2); flat: the
    flattened size after pool2 (conv2 channels × the pooled map)."""
    c_in, c1, c2 = channels
    f64 = torch.float64
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(c_in, c1, 3, padding=1, dtype=f64), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(c1, c2, 3, padding=1, dtype=f64), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(flat, hidden, dtype=f64), tanh=nn.Tanh(),
        fc2=nn.Linear(hidden, out, dtype=f64)))
