"""Section "Examples" and "Recovery and sparsity per basis": every built-in example through the
neuron, PCA and interaction bases (both Jacobian targets), recovery of its known modules at ε and
over the ε grid, and the sparsity of its interactions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.basis import compute_basis
from ..core.edges import build_graph
from ..core.graph import InteractionGraph
from ..examples import load
from .formatting import Timer, fmt, sweep_cells, table
from .recovery import SweepRow, best_row, cross_share, edge_sparsity, plateau, resolution_sweep
from .section import Context, Section
from .settings import BASES, EPS_GRID, EPSILON, LABEL, RESOLUTIONS


@dataclass
class Spec:
    """How one example is analysed: build options, basis options, bases its truth applies to."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    truth_bases: tuple[tuple[str, str], ...] = BASES


SPECS = (
    Spec("planted"),
    Spec("two_tasks"),
    # App. A setting; its truth (one chain per direction) is a statement about the
    # interaction basis only: the i-th neuron / principal component of each layer is no chain.
    Spec("deep_linear", {"center": False, "include_bias": False}, BASES[2:]),
    Spec("digits", truth_bases=()),
)


@dataclass
class BasisResult:
    """One basis of one example: k per layer, sparsity at ε, the best-γ and plateau-γ sweep
    points at ε, the cross-truth ŵ share, (ε, plateau, best) over ``EPS_GRID``, stage seconds."""

    label: str
    k: list[int]
    sparsity: dict[str, float]
    best: SweepRow | None
    chosen: SweepRow | None
    cross: float
    eps_curve: list[tuple[float, SweepRow | None, SweepRow | None]]
    seconds: dict[str, float]
    graph: InteractionGraph
    basis: Any


Examples = dict[str, tuple[Any, list[BasisResult]]]
"""Example name → (the loaded example, one :class:`BasisResult` per entry of ``BASES``)."""


def analyse_basis(ex, spec: Spec, kind: str, target: str, timer: Timer) -> BasisResult:
    """Basis, graph, resolution sweep (at ε and over the ε grid) and sparsity for one basis."""
    label = LABEL[(kind, target)]
    t = Timer()
    with t("basis"), timer(f"{ex.name}: basis"):
        basis = compute_basis(ex.model, ex.inputs, ex.layers, kind=kind, jacobian_target=target,
                              progress=False, **spec.options)
    with t("graph"), timer(f"{ex.name}: graph"):
        graph = build_graph(ex.model, ex.inputs, basis, progress=False)
    labels = ex.truth(graph) if (ex.truth is not None and (kind, target) in spec.truth_bases) \
        else None
    with t("search"), timer(f"{ex.name}: module search"):
        rows = resolution_sweep(graph, EPSILON, RESOLUTIONS, labels)
        curve = []
        for eps in EPS_GRID:
            sw = resolution_sweep(graph, float(eps), RESOLUTIONS, labels)
            curve.append((float(eps), plateau(sw), best_row(sw)))
    return BasisResult(
        label, [basis[layer].k for layer in ex.layers], edge_sparsity(graph, EPSILON),
        best_row(rows), plateau(rows),
        cross_share(graph, labels, EPSILON) if labels is not None else float("nan"),
        curve, t.seconds, graph, basis)


def analyse_examples(ctx: Context) -> Examples:
    """:func:`analyse_basis` for every basis of every example in ``SPECS``."""
    out = {}
    for spec in SPECS:
        with ctx.timer(f"{spec.name}: load"):
            ex = load(spec.name)
        out[spec.name] = (ex, [analyse_basis(ex, spec, k, t, ctx.timer) for k, t in BASES])
    return out


def render(results: Examples, ctx: Context) -> str:
    """"What was run", the examples table and one recovery table per example."""
    L = ["## What was run\n"]
    add = L.append
    add(f"- Examples: {', '.join(results)} (`intermod.analysis.examples`). "
        "Bases: neuron (`kind=\"neuron\"`), PCA (`kind=\"pca\"`), interaction basis with "
        "`jacobian_target=\"output\"` and `\"next_layer\"`; otherwise library defaults "
        "(centred, bias slot, float64, gradient edges), except `deep_linear` which uses the "
        "App. A setting (no centring, no bias slot).")
    add("- Module search: `find_modules` with the CPM objective (seed 0), the same search for "
        "every basis.")
    add(f"- Resolutions: ε = {fmt(EPSILON)} unless said otherwise, "
        f"{len(RESOLUTIONS)} log-spaced γ ∈ [{fmt(RESOLUTIONS[0])}, "
        f"{fmt(RESOLUTIONS[-1])}].")
    add("- *Best*: the γ with the highest ARI against the ground truth (an upper bound a user "
        "without the truth cannot reach). *Plateau*: the γ chosen without the truth — the "
        "middle of the longest run of consecutive γ giving the same number of modules, among "
        "runs with 2 ≤ modules ≤ active nodes / 3 (ties: fewer modules).")
    add("- ARI/NMI (`compare_partitions`) are over nodes that are labelled and *active* "
        "(some edge above √ε); *coverage* is the share of labelled nodes that are active. "
        "The constant direction is never labelled nor partitioned.")
    add("- Sparsity over the P pairs of data directions in adjacent layers: edges with "
        "w > √ε, and the share of Σŵ carried by the top 1 % / 10 % of the P pairs.\n")

    add("## Examples\n")
    ex_rows = []
    for name, (ex, _) in results.items():
        facts = {k: v for k, v in ex.extra.items() if k in ("test_r2", "test_accuracy", "weights")}
        facts_s = "; ".join(f"{k} = " + (", ".join(fmt(x) for x in v) if isinstance(v, list)
                                          else fmt(v) if not isinstance(v, str) else v)
                            for k, v in facts.items())
        ex_rows.append([name, ex.description, str(tuple(ex.inputs.shape)), facts_s or "–"])
    add(table(["example", "description", "inputs", "training"], ex_rows) + "\n")

    add("## Recovery and sparsity per basis\n")
    for name, (_, res) in results.items():
        add(f"### {name}\n")
        rows = []
        for r in res:
            sp = r.sparsity
            rows.append([r.label, str(r.k), f"{sp['n_above']}/{sp['n_pairs']}", sp["top1"],
                         sp["top10"], r.cross, *sweep_cells(r.best), *sweep_cells(r.chosen),
                         r.chosen.cost_units if r.chosen else None,
                         fmt(sum(r.seconds.values()), 2)])
        add(table(["basis", "k per layer", "w>√ε", "top 1 %", "top 10 %", "cross ŵ share",
                   "best ARI", "NMI", "mod.", "γ", "cov.", "plateau ARI", "NMI", "mod.", "γ",
                   "cov.", "cost (units)", "s"], rows) + "\n")
        add(_example_summary(res) + "\n")
    return "\n".join(L)


def headlines(results: Examples, ctx: Context) -> list[str]:
    """Per example with a ground truth: ARI at the best and at the plateau γ, per basis."""
    lines = []
    for name, (_, res) in results.items():
        cells = []
        for r in res:
            if r.best is None:
                continue
            plat = fmt(r.chosen.ari) if r.chosen else "–"
            cells.append(f"{r.label} {fmt(r.best.ari)} / {plat}")
        if cells:
            lines.append(f"- **{name}**, ARI best γ / plateau γ at ε = {fmt(EPSILON)}: "
                         + "; ".join(cells) + ".")
    return lines


def _example_summary(res: list[BasisResult]) -> str:
    """Sentences comparing the bases of one example, generated from the numbers."""
    parts = []
    scored = [r for r in res if r.best is not None]
    if scored:
        top = max(scored, key=lambda r: r.best.ari)
        parts.append(f"Highest best-γ ARI: {top.label} ({fmt(top.best.ari)}).")
        chosen = [r for r in scored if r.chosen is not None]
        if chosen:
            topc = max(chosen, key=lambda r: r.chosen.ari)
            if topc.chosen.ari < 0.1:
                parts.append(f"At the truth-free plateau γ no basis recovers the truth at this "
                             f"ε (largest ARI {fmt(topc.chosen.ari)}).")
            else:
                parts.append(f"Highest ARI at the truth-free plateau γ: {topc.label} "
                             f"({fmt(topc.chosen.ari)}, {topc.chosen.n_modules} modules).")
        missing = [r.label for r in scored if r.chosen is None]
        if missing:
            parts.append(f"No qualifying plateau for: {', '.join(missing)}.")
    dens = {r.label: r.sparsity["n_above"] / max(r.sparsity["n_pairs"], 1) for r in res}
    sparsest = min(dens, key=dens.get)
    conc = max(res, key=lambda r: r.sparsity["top10"])
    parts.append(f"Fewest pairs above √ε (as a share of pairs): {sparsest} "
                 f"({fmt(dens[sparsest])}); most concentrated ŵ (top 10 %): {conc.label} "
                 f"({fmt(conc.sparsity['top10'])}).")
    return " ".join(parts)


SECTION = Section("examples", analyse_examples, render, headlines)
