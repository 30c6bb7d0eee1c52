"""The record every built-in example returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn


@dataclass
class Example:
    """A model with data and node layers; ``truth(graph)`` gives the ground-truth module of
    every graph node (−1: no label, e.g. the constant direction), or is None when unknown."""

    name: str
    model: nn.Module
    inputs: Tensor | Any
    layers: list[str]
    description: str = ""
    truth: Callable[[Any], np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
