"""intermod.analysis: interaction basis, interaction graph and module search.

Usage::

    from intermod import analysis as ia
    basis = ia.compute_basis(model, inputs, layers=["0", "2", "output"])
    graph = ia.build_graph(model, inputs, basis)
    part = ia.find_modules(graph, epsilon=1e-4)

Packages (see docs/architecture.md): :mod:`.core` is the method (nothing in it imports the
others); :mod:`.diagnostics`, :mod:`.report`, :mod:`.validation`, :mod:`.examples` and
:mod:`.models` use it. This package never imports gRPC.
"""

import importlib
from typing import Any

from .ablation import (
    AblationCurve,
    AutoModules,
    EdgeAblation,
    EpsilonChoice,
    ModuleCut,
    ModuleEffects,
    ablation_curve,
    ablation_curves,
    edge_ablation,
    epsilon_from_ablation,
    module_cut,
    module_effects,
    modules_from_ablation,
    plot_ablation_curves,
    plot_epsilon_choice,
    plot_module_effects,
)
from .core.basis import Basis, LayerBasis, compute_basis
from .core.edges import build_graph
from .core.graph import EDGE_RTOL, InteractionGraph, Node
from .core.partition import (
    Comparison,
    Module,
    Partition,
    Score,
    compare_partitions,
    cutoff_strength,
    find_modules,
    partition_cost,
)
from .diagnostics import DegeneracyReport, LayerDiagnostics, diagnose, plot_spectra
from .report import ModuleInfo, ModuleReport, module_report
from .report.plot import plot_graph

__all__ = [
    "Basis", "LayerBasis", "compute_basis", "build_graph", "InteractionGraph", "Node", "EDGE_RTOL", "Module",
    "Partition", "Score", "Comparison", "compare_partitions", "cutoff_strength", "find_modules",
    "partition_cost", "plot_graph", "ModuleInfo", "ModuleReport", "module_report",
    "DegeneracyReport", "LayerDiagnostics", "diagnose", "plot_spectra",
    "ablation_curve", "ablation_curves", "edge_ablation", "epsilon_from_ablation", "module_cut",
    "module_effects", "modules_from_ablation", "AblationCurve", "EdgeAblation", "EpsilonChoice",
    "ModuleCut", "ModuleEffects", "AutoModules", "plot_ablation_curves", "plot_epsilon_choice",
    "plot_module_effects",
]

# Modules that lived at the top of the package before the layout change, still reachable as
# attributes (``from intermod.analysis import hf``); imported on first use.
_MOVED = {"hf": ".models.hf", "remedies": ".validation.remedies", "recovery": ".validation.recovery",
          "sentences": ".examples.sentences"}


# Remedies for finite-sample mixing (docs/ablation.md: the truth-free pipeline on i.i.d. data),
# imported on first use: ``ia.rerotate_degenerate(model, inputs, basis)`` between
# compute_basis and build_graph.
_REMEDIES = ("rerotate_degenerate", "noise_epsilon")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return importlib.import_module(_MOVED[name], __name__)
    if name in _REMEDIES:
        return getattr(importlib.import_module(".validation.remedies", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
