"""``intermod ablate`` and ``intermod modules --auto``: ablations of a graph on the server.

    intermod ablate GRAPH curve --layer 2 [--schedule all | --points 0 1 2 4]
    intermod ablate GRAPH edges --epsilon 1e-3 | --keep 20
    intermod ablate GRAPH cut|effects (--membership FILE | --epsilon E --n-modules K ...)
    intermod ablate GRAPH auto [--tolerance T]
    intermod modules GRAPH --auto [--tolerance T]

The ablation runs on the model and data the graph was computed on (``--data`` / ``--data-id``
for others); ``--plot OUT`` also writes the matching plot (PNG + SVG).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from .report import dumps, partition_table

KINDS = ("curve", "edges", "cut", "effects", "auto")


def effects_table(fx: Any, limit: int = 12) -> str:
    """Modules × output groups: the loss increase when the module is ablated (at most
    ``limit`` columns, the groups with the largest increase first)."""
    data = np.asarray(fx.loss_increase, dtype=float)
    cols = np.argsort(-np.nan_to_num(data, nan=-np.inf).max(0), kind="stable")[:limit]
    cols = np.sort(cols)
    width = max(9, *(len(fx.output_labels[c]) for c in cols))
    rows = [f"{'module':>6} {'loss':>9} " + " ".join(f"{fx.output_labels[c]:>{width}}" for c in cols)]
    for m, total, row in zip(fx.module_ids, fx.loss, data):
        rows.append(f"{m:>6} {total:>9.3g} " + " ".join(f"{row[c]:>{width}.3g}" for c in cols))
    more = f" ({len(cols)} of {data.shape[1]} {fx.group}s shown)" if data.shape[1] > len(cols) else ""
    rows.append(f"{fx.loss_name} increase per {fx.group} with the module ablated at every layer; "
                f"reconstruction loss {fx.reconstruction_loss:.3g}{more}")
    return "\n".join(rows)


def cut_line(cut: Any) -> str:
    base = (f"random equal-size partitions {cut.baseline:.4g} ± {cut.baseline_spread:.2g} "
            f"(n = {len(cut.baseline_losses)})" if cut.baseline_losses else "no random baseline")
    rel = f" (relative {cut.relative:.3g})" if cut.relative is not None else ""
    return (f"module cut ({cut.n_modules} modules): {cut.loss_name} {cut.loss:.4g}{rel}; {base}; "
            f"inactive directions only {cut.inactive_loss:.4g}; reconstruction {cut.reconstruction_loss:.3g}")


def auto_text(auto: Any, layers: list[str]) -> str:
    c = auto.choice
    head = (f"ε from ablation: {auto.epsilon:.4g} (L = {c.loss:.4g} ≤ δ = {auto.tolerance:.4g}; "
            f"L(2ε) = {'past the cap' if c.loss_at_double is None else format(c.loss_at_double, '.4g')}; "
            f"{len(c.curve)} evaluations)")
    verdict = "within" if auto.within_tolerance else "NOT within (lowest cut loss shown)"
    return "\n".join([head, partition_table(auto.partition, layers),
                      f"cut loss {auto.cut_loss:.4g}, {verdict} the tolerance; coverage {auto.coverage:.2f}"])


def _text(kind: str, result: Any, layers: list[str]) -> str:
    if kind == "curve":
        rows = [f"{'kept':>6} {'loss':>12}"] + [f"{m:>6} {v:>12.4g}" for m, v in zip(result.n_kept, result.loss)]
        needed = result.needed() if result.scale is not None else None
        rows.append(f"layer {result.layer} ({result.kind} basis, k = {result.n_directions}): "
                    f"reconstruction loss {result.reconstruction_loss:.3g}; needed for 1% of the output "
                    f"scale: {needed}")
        return "\n".join(rows)
    if kind == "edges":
        return (f"edge ablation: {result.loss_name} {result.loss:.4g} with {result.n_kept} of {result.n_total} "
                f"edges kept (reconstruction {result.reconstruction_loss:.3g}; masks per section {result.n_masks})")
    if kind == "cut":
        return cut_line(result)
    if kind == "effects":
        return effects_table(result)
    return auto_text(result, layers)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    names = ("loss", "layer", "keep", "n_baseline", "group", "tolerance", "max_modules", "batch_size")
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "points", None):
        out["schedule"] = args.points
    elif getattr(args, "schedule", None):
        out["schedule"] = args.schedule
    return out


def run(args: argparse.Namespace, kind: str, search: dict[str, Any], membership: Any) -> None:
    """Submit, follow and print one ablation job (``args``: the CLI's common flags)."""
    from .cli import _client, _emit
    from .cli_inputs import remote_data

    fields = _fields(args)
    if kind == "edges" and search.get("epsilon") is not None:
        fields["epsilon"] = search.pop("epsilon")
    if kind in ("cut", "effects"):
        if membership is not None:
            fields["partition"] = membership
        elif search:
            fields["search"] = search
    with _client(args) as client:
        result = client.ablate(args.graph, kind, progress=not (args.no_progress or args.json),
                               data=remote_data(args), data_tensor=args.data_tensor or None, **fields)
        layers = client.graph_info(args.graph).layers
    if getattr(args, "plot", None):
        _plot(kind, result, args.plot)
    _emit(args, result.to_dict(), _text(kind, result, layers))


def _plot(kind: str, result: Any, path: str) -> None:
    from intermod import analysis as ia
    if kind == "curve":
        ia.plot_ablation_curves(result, path)
    elif kind == "effects":
        ia.plot_module_effects(result, path)
    elif kind == "auto":
        ia.plot_epsilon_choice(result.choice, path)
    else:
        raise ValueError(f"--plot: no plot for {kind!r} (curve, effects, auto)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ablation flags (shared by ``ablate`` and ``modules --auto``)."""
    p.add_argument("--loss", choices=("mse", "kl", "disagreement"),
                   help="behavioural loss (default mse)")
    p.add_argument("--tolerance", type=float, help="δ; default 1%% of the output's scale")
    p.add_argument("--max-modules", type=int, help="auto: largest partition cut-tested")
    p.add_argument("--data", help="other data to ablate on (.npy / .safetensors)")
    p.add_argument("--data-id", help="id of a tensor set on the server")
    p.add_argument("--data-tensor", default="", help="tensor of a multi-tensor data file")
    p.add_argument("--ablate-batch-size", dest="batch_size", type=int, help="rows per forward pass")
    p.add_argument("--no-progress", action="store_true")


def add_parser(command: Any, search_args: Any) -> None:
    """Register ``ablate`` (``command`` and ``search_args`` are the CLI's helpers)."""
    p = command("ablate", cmd_ablate, "ablate a graph on the server: curve, edges, cut, effects, auto")
    p.add_argument("graph", help="graph id")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--layer", help="curve: the node layer")
    p.add_argument("--schedule", choices=("exponential", "all"), help="curve: kept-direction schedule")
    p.add_argument("--points", type=int, nargs="+", help="curve: explicit numbers of kept directions")
    p.add_argument("--keep", type=int, help="edges: keep the N strongest edges per section")
    p.add_argument("--membership", help="cut / effects: JSON list, partition JSON or .npy")
    p.add_argument("--n-baseline", type=int, help="cut: random baseline partitions (default 8)")
    p.add_argument("--group", choices=("coordinate", "class", "position"), help="effects: output groups")
    p.add_argument("--plot", help="also write the plot (curve, effects, auto) as OUT.png / OUT.svg")
    add_arguments(p)
    search_args(p)


def cmd_ablate(args: argparse.Namespace) -> None:
    from .cli import _search
    from .cli_inputs import read_membership
    membership = read_membership(args.membership) if args.membership else None
    run(args, args.kind, _search(args), membership)


def cmd_modules_auto(args: argparse.Namespace) -> None:
    """``intermod modules GRAPH --auto``: the truth-free pipeline on the server."""
    if args.local:
        raise ValueError("--auto needs the model and data: run it on the server (no --local)")
    args.plot = None
    run(args, "auto", {}, None)


__all__ = ["add_parser", "add_arguments", "cmd_modules_auto", "effects_table", "cut_line", "auto_text", "dumps"]
