"""Pictures and explanations of a partition: the static graph plot (and, later, module reports)."""

from .plot import plot_graph

__all__ = ["plot_graph"]
