"""Built-in example networks whose modules are known (or, for ``digits``, a real data set).

Every example is an :class:`Example`: a model, the inputs to analyse it on, the node layers
(module paths whose *input* is the cut point, or ``"output"``), a description, and a
ground-truth labelling of the basis directions of any graph built on those layers::

    from intermod.analysis import examples
    ex = examples.load("two_tasks")
    basis = ia.compute_basis(ex.model, ex.inputs, ex.layers)
    graph = ia.build_graph(ex.model, ex.inputs, basis)
    labels = ex.truth(graph) if ex.truth else None   # np.int64 over graph.nodes, -1 = no label

``Example`` fields: ``name, model, inputs, layers, description, truth`` (``graph -> labels``
or None; the registry makes the constant direction −1 in every example) and ``extra`` (example-specific facts: training settings, accuracy, data layout).
``names()`` lists the registered examples; ``load(name, **kw)`` builds one, passing ``kw`` to
the example module's ``build`` function. Modules are imported lazily, so loading one example
never trains or imports another.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .base import Example

__all__ = ["Example", "load", "names"]

#: registered name -> submodule of this package exposing ``build(**kw) -> Example``.
_REGISTRY: dict[str, str] = {
    "planted": "planted",
    "two_tasks": "two_tasks",
    "deep_linear": "deep_linear",
    "digits": "digits",
    "digits_cnn": "digits_cnn",
    "modadd": "modadd",
    "minilm": "minilm",
}


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
    example = module.build(**kw)
    if example.truth is not None:
        example.truth = _BiasUnlabelled(example.truth)
    return example


class _BiasUnlabelled:
    """Wraps a truth function so that the constant (bias) direction is always labelled -1,
    whatever the basis options; other attributes (e.g. ``shares``) pass through."""

    def __init__(self, truth: Any) -> None:
        self._truth = truth

    def __call__(self, graph: Any) -> np.ndarray:
        labels = np.array(self._truth(graph), dtype=np.int64)
        labels[graph.is_bias] = -1
        return labels

    def __getattr__(self, name: str) -> Any:
        return getattr(self._truth, name)
