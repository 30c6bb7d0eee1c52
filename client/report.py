"""Plain-text tables and JSON views of results, shared by the CLI and the demo."""

from __future__ import annotations

from typing import Any

from intermod.analysis.core import jsonutil


def partition_table(partition: Any, layers: list[str]) -> str:
    """One row per module: size, nodes per layer, internal and cut strength (log units)."""
    width = max([6, *(len(layer) for layer in layers)])
    head = f"{'module':>6} {'size':>5} " + " ".join(f"{layer:>{width}}" for layer in layers)
    rows = [head + f" {'internal':>9} {'cut':>9}"]
    for m in partition.modules:
        per_layer = " ".join(f"{m.sizes_by_layer.get(layer, 0):>{width}}" for layer in layers)
        rows.append(f"{m.id:>6} {m.size:>5} {per_layer} {m.internal:>9.3f} {m.cut:>9.3f}")
    rows.append(f"{partition.n_modules} modules, cost {partition.cost:.4g} nats "
                f"({partition.cost_units:.4g} unit-strength interactions cut), quality "
                f"{partition.quality:.4g}, epsilon {partition.epsilon:g}, "
                f"{len(partition.inactive)} inactive nodes")
    return "\n".join(rows)


def dumps(obj: Any) -> str:
    """Indented JSON for people and scripts (``--json`` output, result files)."""
    return jsonutil.dumps(obj, indent=2)
