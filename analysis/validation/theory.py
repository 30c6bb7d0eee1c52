"""Section "Theory checks": the deep linear network of the paper's App. A and the §6.2
invariance of the interaction basis under an invertible map of one node layer. Both are
numerical identities of the method (expected at float64 rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.activations import layer_activations
from ..core.basis import compute_basis
from ..core.edges import build_graph
from ..examples import load
from .formatting import Timer, fmt, table
from .recovery import deep_linear_check, transformed_sequential
from .section import Context, Section
from .settings import BASES, LABEL


@dataclass
class TheoryResult:
    """``app_a``: Jacobian target → :func:`deep_linear_check` numbers and the weights' rank;
    ``invariance``: rows [basis label, rel. error of Λ, of |f̂|, of the edges]."""

    app_a: dict[str, dict[str, float]]
    invariance: list[list[Any]]


def app_a_check(timer: Timer) -> dict[str, dict[str, float]]:
    """App. A on deep_linear for both Jacobian targets (no centring, no bias slot)."""
    ex = load("deep_linear")
    out = {}
    with timer("App. A check"):
        for target in ("next_layer", "output"):
            basis = compute_basis(ex.model, ex.inputs, ex.layers, jacobian_target=target,
                                  center=False, include_bias=False, progress=False)
            graph = build_graph(ex.model, ex.inputs, basis, progress=False)
            out[target] = {**deep_linear_check(graph), "rank": ex.extra["rank"]}
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def invariance_check(timer: Timer, cut: str = "2", seed: int = 0) -> list[list[Any]]:
    """§6.2 on two_tasks: f ↦ R f at node layer ``cut`` (R random invertible, condition ≤ 4),
    next weights W ↦ W R⁻¹. Relative errors of Λ, |f̂| and the edge matrices, max over layers."""
    ex = load("two_tasks")
    gen = torch.Generator().manual_seed(seed)
    d = ex.model.get_submodule(cut).in_features
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    R = q1 @ torch.diag(0.5 + 1.5 * torch.rand(d, generator=gen, dtype=torch.float64)) @ q2
    model2, names = transformed_sequential(ex.model, cut, R)
    layers2 = [names[layer] for layer in ex.layers]
    acts = layer_activations(ex.model, ex.inputs, ex.layers)
    acts2 = layer_activations(model2, ex.inputs, layers2)
    rows = []
    with timer("§6.2 invariance check"):
        for kind, target in BASES:
            b1 = compute_basis(ex.model, ex.inputs, ex.layers, kind=kind, jacobian_target=target,
                               progress=False)
            b2 = compute_basis(model2, ex.inputs, layers2, kind=kind, jacobian_target=target,
                               progress=False)
            g1 = build_graph(ex.model, ex.inputs, b1, progress=False)
            g2 = build_graph(model2, ex.inputs, b2, progress=False)
            lam = max(_rel(b2[n2].Lambda, b1[n1].Lambda) for n1, n2 in zip(ex.layers, layers2))
            fh = max(_rel(np.abs(b2[n2].transform(acts2[n2])), np.abs(b1[n1].transform(acts[n1])))
                     for n1, n2 in zip(ex.layers, layers2))
            edges = max(_rel(g2.edge_matrix(a2, c2), g1.edge_matrix(a1, c1))
                        for a1, c1, a2, c2 in zip(ex.layers[:-1], ex.layers[1:], layers2[:-1],
                                                  layers2[1:]))
            rows.append([LABEL[(kind, target)], lam, fh, edges])
    return rows


def compute(ctx: Context) -> TheoryResult:
    return TheoryResult(app_a_check(ctx.timer), invariance_check(ctx.timer))


def render(res: TheoryResult, ctx: Context) -> str:
    return "\n".join([
        "## Theory checks\n",
        "**App. A (deep linear network).** E = w²; off-diagonal share = Σ_{i≠j}E_ij/ΣE_ij "
        "(max over layer pairs); |E_ii − Λ_i|/max Λ and the spread of Λ across layers "
        "(max |Λ^l − Λ^0|/max Λ^0); k per layer against the rank of the weight product.\n",
        table(["target", "off-diagonal share", "\\|E_ii − Λ_i\\|", "Λ spread", "k per layer",
               "rank"],
              [[t, v["offdiag"], v["diag_vs_lambda"], v["lambda_spread"], str(v["k"]), v["rank"]]
               for t, v in res.app_a.items()]) + "\n",
        "**§6.2 invariance (two_tasks).** Node layer `2` replaced by R f (R random, singular "
        "values in [0.5, 2]) and the next weights by W R⁻¹; relative errors (Frobenius) between "
        "the two models, max over layers. The paper's claim concerns the interaction basis; "
        "the neuron and PCA bases are shown as the contrast.\n",
        table(["basis", "Λ", "\\|f̂\\|", "edges w"], res.invariance) + "\n"])


def headlines(res: TheoryResult, ctx: Context) -> list[str]:
    inv = {r[0]: max(r[1:]) for r in res.invariance}
    return ["- §6.2 invariance, largest relative error: "
            + "; ".join(f"{k} {fmt(v)}" for k, v in inv.items()) + ".",
            "- App. A, off-diagonal edge share: "
            + "; ".join(f"{t} {fmt(v['offdiag'])}" for t, v in res.app_a.items()) + "."]


SECTION = Section("theory", compute, render, headlines)
