"""intermod.analysis: interaction basis, interaction graph and module search.

Usage::

    from intermod import analysis as ia
    basis = ia.compute_basis(model, inputs, layers=["0", "2", "output"])
    graph = ia.build_graph(model, inputs, basis)
    part = ia.find_modules(graph, epsilon=1e-4)

This package never imports gRPC.
"""

from .basis import Basis, LayerBasis, compute_basis
from .diagnostics import DegeneracyReport, LayerDiagnostics, diagnose, plot_spectra
from .edges import build_graph
from .graph import InteractionGraph, Node
from .partition import (
    Comparison,
    Module,
    Partition,
    Score,
    compare_partitions,
    cutoff_strength,
    find_modules,
    partition_cost,
)
from .plot import plot_graph

__all__ = [
    "Basis", "LayerBasis", "compute_basis", "build_graph", "InteractionGraph", "Node", "Module",
    "Partition", "Score", "Comparison", "compare_partitions", "cutoff_strength", "find_modules",
    "partition_cost", "plot_graph",
    "DegeneracyReport", "LayerDiagnostics", "diagnose", "plot_spectra",
]
