"""Linear heads: where a node layer's module is, or begins with, an ``nn.Linear`` that pays
(:func:`head_pays`), derivatives are taken at its output z = W f + b s (the layer's *point*)
and pulled back exactly through P = [[W, b], [0, 1]]
(:meth:`~intermod.analysis.core.nodes.NodeModel.pullback`): per-sample work then scales with
d_out, not d_in."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .layout import Layout
from .sequence import ModuleSequence


def head_pays(linear: nn.Linear) -> bool:
    """Whether derivatives at z = W f + b (h = d_out) cost less than at f (d = d_in).

    Per sample and cotangent, at z: the Gram (h+1)² and the rotation into the basis h·(d+1);
    at f: the backward through W (h·d), the Gram (d+1)² and the rotation d·(d+1) (k ≤ d+1
    basis directions): about h² + hd against hd + 2d², so z pays unless the layer widens by √2 or more.
    """
    h, d = linear.out_features, linear.in_features
    return (h + 1) ** 2 + h * (d + 1) < h * d + (d + 1) ** 2 + d * (d + 1)


def linear_heads(modules: Mapping[str, nn.Module], sequence: ModuleSequence | None,
                 layouts: Mapping[str, Layout]) -> dict[str, nn.Linear]:
    """Layer -> the Linear whose output is its point: the layer's own module when it is an
    ``nn.Linear``, or, in a model that applies its modules in ``sequence``, the first module of
    the layer's run when that is one (a block whose forward starts with its Linear, e.g.
    ``layers.0`` = Linear then ReLU); only where it pays and the layer's samples are rows of
    features."""
    heads = {}
    for name, module in modules.items():
        if not isinstance(module, nn.Linear) and sequence is not None:
            module = sequence.modules[sequence.index(name)]
        if isinstance(module, nn.Linear) and head_pays(module) and layouts[name].kind in ("features", "tokens"):
            heads[name] = module
    return heads
