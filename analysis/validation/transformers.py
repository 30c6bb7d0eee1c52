"""Section "Transformers": MiniLM (residual stream on the built-in sentences) and the
modular-addition transformer (modules against Fourier frequencies), as nested lists of their
summaries (every value from the run)."""

from __future__ import annotations

from typing import Any

from ..report.plot import plot_graph
from .section import Context, Section


def transformers_check(ctx: Context) -> dict[str, Any]:
    """MiniLM (residual stream, built-in sentences; edges on a subset) and the modular-addition
    transformer: their summaries; draws ``modules_minilm.png``."""
    from ..examples import minilm, modadd

    with ctx.timer("minilm"):
        mini = minilm.analyse(n_sentences=300, edge_sentences=16, n_probes=8, edge_probes=1)
    plot_graph(mini.graph, mini.partition, ctx.fig_dir / "modules_minilm.png", top_n=40)
    with ctx.timer("modadd"):
        mod = modadd.analyse()
    return {"minilm": mini.summary(), "modadd": mod.summary()}


def nested_list(obj: Any, depth: int = 0) -> list[str]:
    """A summary (dicts, lists, scalars) as markdown list lines; lists show their first 12."""
    pad = "  " * depth
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and len(str(v)) > 100:
                out += [f"{pad}- {k}:"] + nested_list(v, depth + 1)
            else:
                out.append(f"{pad}- {k}: {v}")
        return out
    if isinstance(obj, list):
        more = [f"{pad}- … ({len(obj) - 12} more)"] if len(obj) > 12 else []
        return [f"{pad}- {v}" for v in obj[:12]] + more
    return [f"{pad}- {obj}"]


def render(res: dict[str, Any], ctx: Context) -> str:
    return "\n".join([
        "## Transformers", "",
        "**MiniLM** (all-MiniLM-L6-v2, offline): basis of the residual stream on the 300 built-in "
        "sentences (8 probes, float32), edges on the first 16 sentences (1 probe over positions), "
        "CPM modules at ε = 1e-2.", "",
        *nested_list(res["minilm"]), "", f"![MiniLM modules]({ctx.rel}/modules_minilm.png)", "",
        "**Modular addition** (one-layer transformer trained in the repo, p = 59): modules against "
        "the dominant Fourier frequency of each direction. `alignment` compares modules with "
        "frequency labels; low ARI means the modules found do not follow the frequencies.", "",
        *nested_list(res["modadd"]), ""])


SECTION = Section("transformers", transformers_check, render)
