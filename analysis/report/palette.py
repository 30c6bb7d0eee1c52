"""Module colours shared by the static plot and the HTML report.

The ``MAX_COLOURED`` largest modules with at least two directions get distinct colours of a
qualitative palette (matplotlib's tab20 less its greys, strong hues first); singletons
and modules beyond that get grey. The constant direction is black, inactive directions light grey.
"""

from __future__ import annotations

import numpy as np

from ..core.partition import Partition

__all__ = ["BIAS", "INACTIVE", "MAX_COLOURED", "OTHER", "PALETTE", "module_colours"]

#: tab20 without its two greys (grey means "not coloured"), dark shades first (hex).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
           "#dbdb8d", "#9edae5"]
MAX_COLOURED = len(PALETTE)
OTHER = "#9a9a9a"      # singletons and modules beyond the palette
INACTIVE = "#dddddd"   # no edge above √ε (membership −1)
BIAS = "#000000"       # the constant direction


def module_colours(partition: Partition | None) -> dict[int, str]:
    """Module id -> hex colour: the palette for the largest modules of size ≥ 2 (ties: lower
    id first), ``OTHER`` for the rest."""
    if partition is None:
        return {}
    sizes = np.array([m.size for m in partition.modules], dtype=np.int64)
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    colours = {int(m.id): OTHER for m in partition.modules}
    for rank, c in enumerate(order[:MAX_COLOURED]):
        if sizes[c] >= 2:
            colours[int(partition.modules[c].id)] = PALETTE[rank]
    return colours
