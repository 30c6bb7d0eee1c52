"""Ablation benchmark (part of `make bench`; writes bench/ablation_results.md and .json).

MLP 784-100-100-10 (random weights, the reference pipeline's model), 2000 inputs, float64:
a node ablation curve (exponential schedule) at the first hidden layer, a module cut (with and
without its 8 random baselines) and the truth-free pipeline ``modules_from_ablation``, each
in seconds and in multiples of one plain forward pass over the data. The cut must cost at most
(modules + 1) forward passes per section.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from run import cut_points, inputs, machine, mlp, write_results

HERE = Path(__file__).resolve().parent
Q = {"progress": False, "device": "cpu"}


def forward_seconds(model, X, repeats: int = 5) -> float:
    """Best time of one plain float64 forward pass over the data."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model(X)
            best = min(best, time.perf_counter() - t)
    return best


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run() -> dict:
    from intermod import analysis as ia

    model = mlp()
    X = inputs(2000)
    layers = cut_points(model)
    basis = ia.compute_basis(model, X, layers, **Q)
    graph = ia.build_graph(model, X, basis, **Q)
    t_fwd = forward_seconds(model, X)
    res = {"forward_s": t_fwd, "k": [basis[n].k for n in layers], "n_edges": graph.n_edges}
    curve, t = timed(lambda: ia.ablation_curve(model, X, basis, "2", **Q))
    res["curve"] = {"s": t, "points": len(curve.n_kept), "x_forward": t / t_fwd,
                    "needed": curve.needed(), "k": curve.n_directions}
    auto, t = timed(lambda: ia.modules_from_ablation(model, X, graph, **Q))
    res["auto"] = {"s": t, "x_forward": t / t_fwd, "epsilon": auto.epsilon, "n_modules": auto.partition.n_modules,
                   "evaluations": len(auto.choice.curve), "cut_loss": auto.cut_loss, "tolerance": auto.tolerance,
                   "coverage": auto.coverage}
    part = auto.partition
    sections = len(layers) - 1
    for key, n_base in (("cut", 0), ("cut_with_baseline", 8)):
        cut, t = timed(lambda n_base=n_base: ia.module_cut(model, X, graph, part, n_baseline=n_base, **Q))
        res[key] = {"s": t, "x_forward": t / t_fwd, "n_modules": cut.n_modules, "copies": cut.n_forward,
                    "x_forward_per_section": t / t_fwd / sections, "loss": cut.loss, "baseline": cut.baseline}
    res["cut"]["bound_x_forward_per_section"] = res["cut"]["n_modules"] + 1
    return res


def markdown(res: dict) -> str:
    r = res
    lines = [f"Machine: {r['machine']}.", "",
             f"**Ablations, MLP 784-100-100-10, 2000 inputs, float64** (k per layer {r['k']}, "
             f"{r['n_edges']} edges; one plain forward pass over the data: {1e3 * r['forward_s']:.1f} ms)", "",
             "| run | seconds | × one forward | notes |", "|---|---|---|---|",
             f"| node ablation curve, layer 2, exponential schedule | {r['curve']['s']:.2f} | "
             f"{r['curve']['x_forward']:.0f} | {r['curve']['points']} points, needed(δ) = {r['curve']['needed']} of {r['curve']['k']} |",
             f"| module cut ({r['cut']['n_modules']} modules, no baseline) | {r['cut']['s']:.2f} | "
             f"{r['cut']['x_forward']:.0f} | {r['cut']['x_forward_per_section']:.1f} per section "
             f"(bound: modules + 1 = {r['cut']['bound_x_forward_per_section']}); {r['cut']['copies']} batch copies |",
             f"| module cut + 8 random baselines | {r['cut_with_baseline']['s']:.2f} | "
             f"{r['cut_with_baseline']['x_forward']:.0f} | loss {r['cut_with_baseline']['loss']:.3g}, "
             f"baseline {r['cut_with_baseline']['baseline']:.3g} |",
             f"| modules_from_ablation | {r['auto']['s']:.2f} | {r['auto']['x_forward']:.0f} | "
             f"ε = {r['auto']['epsilon']:.3g} ({r['auto']['evaluations']} bisection evaluations), "
             f"{r['auto']['n_modules']} modules, coverage {r['auto']['coverage']:.2f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "ablation_results"))
    args = ap.parse_args()
    res = {"machine": machine(), **run()}
    write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
