"""Section "A convolutional network": ``digits_cnn`` through the same four bases as the examples,
next to the ``digits`` MLP (same data, same training recipe) from the "examples" section.

The CNN's conv maps are read as channels at image positions (docs/models.md), so its node
layers have 64, 16, 16, 1, 1 positions: the table says so per layer, with the layout used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.activations import node_activations
from ..core.layout import Layout
from ..core.partition import find_modules
from ..examples import load
from ..report.plot import plot_graph
from .bases import BasisResult, Examples, Spec, analyse_basis
from .formatting import fmt, table
from .section import Context, Section
from .settings import BASES, EPSILON

NAME = "digits_cnn"
MLP = "digits"


@dataclass
class CnnResult:
    """The CNN example, one :class:`BasisResult` per basis, per-layer (layout, positions, d),
    and the MLP's results from the "examples" section (None when it did not run)."""

    example: Any
    results: list[BasisResult]
    layers: list[tuple[str, str, int, int]]
    mlp: list[BasisResult] | None


def compute(ctx: Context) -> CnnResult:
    """The four bases of ``digits_cnn`` (:func:`analyse_basis`) and a drawing of its modules."""
    with ctx.timer(f"{NAME}: load"):
        ex = load(NAME)
    spec = Spec(NAME, truth_bases=())
    res = [analyse_basis(ex, spec, kind, target, ctx.timer) for kind, target in BASES]
    basis = res[2].basis
    layout = basis.options["layout"]
    acts = node_activations(ex.model, ex.inputs[:2], ex.layers)
    layers = [(n, layout[n], Layout(layout[n]).n_positions(acts[n].shape), basis[n].dim) for n in ex.layers]
    r = res[2]
    gamma = r.chosen.resolution if r.chosen else 0.1
    with ctx.timer("plots"):
        part = find_modules(r.graph, epsilon=EPSILON, resolution=gamma)
        plot_graph(r.graph, part, ctx.fig_dir / f"modules_{NAME}.png", epsilon=EPSILON,
                   title=f"{NAME}: interaction basis (output), ε={EPSILON:g}, γ={gamma:.3g}, "
                         f"{part.n_modules} modules")
    examples: Examples | None = ctx.results.get("examples")
    mlp = examples[MLP][1] if examples and MLP in examples else None
    return CnnResult(ex, res, layers, mlp)


def _rows(model: str, res: list[BasisResult]) -> list[list[Any]]:
    rows = []
    for r in res:
        sp = r.sparsity
        chosen = r.chosen
        rows.append([model, r.label, str(r.k), f"{sp['n_above']}/{sp['n_pairs']}", sp["top10"],
                     chosen.n_modules if chosen else "–", fmt(chosen.resolution) if chosen else "–",
                     chosen.cost_units if chosen else None, fmt(sum(r.seconds.values()), 2)])
    return rows


def render(out: CnnResult, ctx: Context) -> str:
    ex = out.example
    L = ["## A convolutional network (digits_cnn) next to the digits MLP\n",
         f"`{NAME}`: {ex.description} Weights: {ex.extra['weights']}. Node layers, each read in "
         "its layout (docs/models.md): a conv map is C features at H·W positions, so every "
         "(image, position) pair is a sample; the bias slot crosses the pooling and the flatten "
         "through the mean slot.\n",
         table(["layer", "layout", "positions per image", "features d"],
               [[n, lay, p, d] for n, lay, p, d in out.layers]) + "\n",
         f"Same four bases, ε = {fmt(EPSILON)}, truth-free plateau γ (there is no ground truth "
         "for either network). The MLP rows are those of the `digits` table above.\n"]
    rows = _rows(NAME, out.results) + (_rows(MLP, out.mlp) if out.mlp else [])
    L.append(table(["network", "basis", "k per layer", "w>√ε", "top 10 %", "plateau mod.", "γ",
                    "cost (units)", "s"], rows) + "\n")
    L.append(f"![modules of {NAME}]({ctx.rel}/modules_{NAME}.png)\n")
    return "\n".join(L)


def headlines(out: CnnResult, ctx: Context) -> list[str]:
    r = out.results[2]
    mods = r.chosen.n_modules if r.chosen else "no plateau"
    line = (f"- **{NAME}** (conv maps as channels at positions): interaction basis (output) k per "
            f"layer {r.k}, plateau modules {mods}")
    if out.mlp:
        m = out.mlp[2]
        line += f"; the digits MLP: k {m.k}, plateau modules {m.chosen.n_modules if m.chosen else '–'}"
    return [line + "."]


SECTION = Section("cnn", compute, render, headlines)
