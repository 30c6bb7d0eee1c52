"""Built-in example networks whose modules are known (or, for ``digits``, a real data set).

Every example is an :class:`Example`: a model, the inputs to analyse it on, the node layers
(module paths whose *input* is the cut point, or ``"output"``), a description, and a
ground-truth labelling of the basis directions of any graph built on those layers::

    from intermod.analysis import examples
    ex = examples.load("two_tasks")
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers)
    graph = ia.build_graph(ex.model, ex.inputs, basis)
    labels = ex.truth(graph)          # np.int64 over graph.nodes, -1 = no label; or None

``names()`` lists the registered examples; ``load(name, **kw)`` builds one, passing ``kw`` to
the example module's ``build`` function. Modules are imported lazily, so loading one example
never trains or imports another.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from intermod.analysis import InteractionGraph

__all__ = ["Example", "load", "names"]

TruthFn = Callable[["InteractionGraph"], np.ndarray]

#: registered name -> submodule of this package exposing ``build(**kw) -> Example``.
_REGISTRY: dict[str, str] = {
    "planted": "planted",
    "two_tasks": "two_tasks",
    "deep_linear": "deep_linear",
    "digits": "digits",
}


@dataclass
class Example:
    """A model to analyse, with its data and (where known) its ground-truth modules.

    Fields:
        name: registry name.
        model: the network, in evaluation mode.
        inputs: tensor (n, d_in); product data where the example has independent parts.
        layers: node layers for ``ia.compute_basis`` (module paths, input of that module,
            or ``"output"``), in forward order.
        description: one paragraph saying what the network is and how the truth is defined.
        truth_fn: ``graph -> labels`` (np.int64, one per ``graph.nodes``, -1 = no label,
            e.g. the bias direction), or None when no ground truth is known.
        metadata: example-specific facts (training settings, accuracy, data layout).
    """

    name: str
    model: nn.Module
    inputs: torch.Tensor
    layers: list[str]
    description: str
    truth_fn: TruthFn | None = field(default=None, repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    def truth(self, graph: InteractionGraph) -> np.ndarray | None:
        """Ground-truth module label of every node of ``graph`` (-1: no label), or None."""
        if self.truth_fn is None:
            return None
        return np.asarray(self.truth_fn(graph), dtype=np.int64)


def names() -> list[str]:
    """Names of the built-in examples, in a fixed order."""
    return list(_REGISTRY)


def load(name: str, **kw: Any) -> Example:
    """Build the example ``name``; keyword arguments go to its module's ``build``.

    Raises:
        ValueError: ``name`` is not a registered example.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown example {name!r}; known examples: {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{_REGISTRY[name]}")
    return module.build(**kw)
