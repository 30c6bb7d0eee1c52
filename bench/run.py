"""intermod benchmarks: `make bench` (writes bench/results.md and bench/results.json).

1. MLP 784-w-w-10 (random weights), n = 2000 inputs, float64, basis + edges, both Jacobian
   targets, w = 100, 400, 800: seconds per stage beside a plain float64 matmul timed just before
   each run; GFLOP counted from the floor of exact edges, 2·n·Σ_l k_{l+1}·h_l·k_l (h_l: the
   width of section l), its rate and share of the matmul rate; the basis stage's share of the
   total. With ``--rib PYTHON CHECKOUT`` the reference implementation (ApolloResearch/rib, basis
   "jacobian", edges "squared") runs on the same weights and inputs, each width in its own
   process (bench/reference.py), and the ratios are printed.
2. float32 compute (float64 accumulation) against float64 at w = 400: speed-up and the
   relative error of Λ and of the edges with w > 1e-3·max, beside the error that rounding only
   the inputs to float32 causes in a float64 run (the basis's own conditioning).
3. Scaling with n (1e3 … 1e5 samples, streamed batches) and with depth (2 … 8 hidden layers):
   time and peak RSS, each point in a fresh subprocess so peak RSS is its own.
4. Leiden on layered graphs of 1e4 … 1e6 edges: find_modules against raw igraph.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class Batches:
    """A re-iterable of seeded random batches: n samples without holding them in memory."""

    def __init__(self, n: int, d: int, batch: int = 512, seed: int = 0, dtype=torch.float64):
        self.n, self.d, self.batch, self.seed, self.dtype = n, d, batch, seed, dtype

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.batch):
            yield torch.randn(min(self.batch, self.n - start), self.d, generator=gen, dtype=self.dtype)


def mlp(width: int = 100, d_in: int = 784, d_out: int = 10, seed: int = 0, hidden: int = 2) -> nn.Sequential:
    """d_in -> width (``hidden`` ReLU layers) -> d_out, float64."""
    torch.manual_seed(seed)
    sizes = [d_in] + [width] * hidden
    parts: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        parts += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*parts, nn.Linear(width, d_out)).double()


def cut_points(model: nn.Sequential) -> list[str]:
    """The input of every Linear, and the output."""
    return [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)] + ["output"]


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    """The benchmark's inputs (n, 784), float64 (shared with bench/reference.py)."""
    return torch.randn(n, 784, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def matmul_gflops(n: int = 1500, repeats: int = 5) -> float:
    """A plain float64 matmul's rate on this machine now."""
    a, b = torch.randn(n, n, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def pipeline(model, data, target: str, device: str = "cpu", dtype=torch.float64, modules: bool = True,
             layers: list[str] | None = None, structured: bool = True) -> dict:
    """Basis + edges (+ modules): seconds per stage; ``_basis`` and ``_graph`` hold the results.
    ``layers``: the cut points (default: the inputs of a Sequential's Linears, and the output)."""
    from intermod import analysis as ia

    layers = cut_points(model) if layers is None else layers
    t0 = time.perf_counter()
    basis = ia.compute_basis(model, data, layers, jacobian_target=target, progress=False, device=device, dtype=dtype,
                             structured=structured)
    t1 = time.perf_counter()
    graph = ia.build_graph(model, data, basis, progress=False, device=device, dtype=dtype, structured=structured)
    t2 = time.perf_counter()
    part = ia.find_modules(graph, epsilon=1e-4) if modules else None
    t3 = time.perf_counter()
    return {"basis_s": t1 - t0, "edges_s": t2 - t1, "modules_s": t3 - t2, "total_s": t2 - t0,
            "stages": {k: round(v, 3) for k, v in basis.timings.items()},
            "k": [basis[n].k for n in layers], "n_edges": graph.n_edges,
            "n_modules": None if part is None else part.n_modules, "_basis": basis, "_graph": graph}


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def floor_gflop(model: nn.Sequential, k: list[int], n: int) -> float:
    """2·n·Σ_l k_{l+1}·h_l·k_l / 1e9: every per-sample Jacobian entry in basis coordinates,
    h_l = the width of section l (the output size of its Linear)."""
    h = [m.out_features for m in model if isinstance(m, nn.Linear)]
    return 2 * n * sum(k[j + 1] * h[j] * k[j] for j in range(len(h))) / 1e9


def active_share(model: nn.Sequential, X: torch.Tensor) -> list[float]:
    """The share of (sample, unit) pairs with σ′ ≠ 0 after each Linear (1.0 where no ReLU
    follows): the per-sample GEMMs skip the others."""
    shares, h = [], X
    with torch.no_grad():
        for i, m in enumerate(model):
            h = m(h)
            if isinstance(m, nn.Linear):
                relu = i + 1 < len(model) and isinstance(model[i + 1], nn.ReLU)
                shares.append(float((h > 0).double().mean()) if relu else 1.0)
    return shares


def effective_gflop(model: nn.Sequential, k: list[int], n: int, rho: list[float]) -> float:
    """2·n·Σ_l k_{l+1}·(ρ_l·h_l + 1)·k_l / 1e9 with ρ_l the σ′ ≠ 0 share (:func:`active_share`):
    what the per-sample GEMMs over the active rows (and the slot row) multiply."""
    h = [m.out_features for m in model if isinstance(m, nn.Linear)]
    return 2 * n * sum(k[j + 1] * (rho[j] * h[j] + 1) * k[j] for j in range(len(h))) / 1e9


def keep_fastest(best: dict, key, r: dict) -> dict:
    """best[key] = r the first time, then each of its stage times (basis_s, edges_s, where r has
    them) the minimum over the runs seen: the interleaved passes' "best of" per stage."""
    b = best.setdefault(key, r)
    b.update({s: min(b[s], r[s]) for s in ("basis_s", "edges_s") if s in r})
    return b


def mlp_rows(widths: list[int], X: torch.Tensor, device: str, repeats: int) -> list[dict]:
    """Every width × target ``repeats`` times, in interleaved passes (the whole table once, then
    again), each stage's best kept: a shared machine's slow spells last longer than one run, so
    back-to-back repeats of one row can all fall inside the same spell. basis_s and edges_s are
    each the fastest of their ``repeats`` runs, total_s their sum; the matmul is timed just
    before each run and the fastest is kept."""
    models = {w: mlp(w) for w in widths}
    keys = [(w, t) for w in widths for t in ("next_layer", "output")]
    best: dict[tuple[int, str], dict] = {}
    for _ in range(repeats):
        for w, t in keys:
            peak = matmul_gflops()
            b = keep_fastest(best, (w, t), {**public(pipeline(models[w], X, t, device, modules=False)),
                                            "matmul_gflops": peak})
            b["matmul_gflops"] = max(b["matmul_gflops"], peak)
    return [_derived(models[w], w, t, X, best[w, t]) for w, t in keys]


def _derived(model: nn.Sequential, width: int, target: str, X: torch.Tensor, r: dict) -> dict:
    """A row's rates and shares from its best stage times (:func:`mlp_rows`)."""
    n = X.shape[0]
    r["total_s"] = r["basis_s"] + r["edges_s"]
    gflop = floor_gflop(model, r["k"], n)
    rho = active_share(model, X)
    eff = effective_gflop(model, r["k"], n, rho)
    r.update(width=width, target=target, n=n, floor_gflop=round(gflop, 1),
             edge_gflops=round(gflop / r["edges_s"], 1),
             edge_share=round(gflop / r["edges_s"] / r["matmul_gflops"], 3),
             active_share=[round(x, 3) for x in rho], effective_gflop=round(eff, 1),
             effective_share=round(eff / r["edges_s"] / r["matmul_gflops"], 3),
             basis_share=round(r["basis_s"] / r["total_s"], 3), matmul_gflops=round(r["matmul_gflops"], 1))
    return r


def _rel_err(a: np.ndarray, b: np.ndarray, top: float | None = None, rtol: float = 1e-3) -> float:
    """max |a − b| / b over the entries of b above rtol·top (top: max(b) by default), on the
    leading block both share: directions are sorted by Λ, and float32's larger default cut-off
    may drop a few trailing near-null ones."""
    block = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape))
    a, b = a[block], b[block]
    big = b > rtol * (b.max() if top is None else top)
    return float(np.max(np.abs(a[big] - b[big]) / b[big])) if big.any() else 0.0


def _edge_err(graph, ref) -> float:
    """The largest relative error of E = w² against ``ref`` over every section, on the E above
    1e-6·max(E) of ``ref`` (w > 1e-3·max w)."""
    top = max(float(ref.w.max()) ** 2, 1e-300)
    return max(_rel_err(graph.edge_matrix(a, b) ** 2, ref.edge_matrix(a, b) ** 2, top, 1e-6)
               for a, b in zip(ref.layers[:-1], ref.layers[1:]))


def _mixed(model, X: torch.Tensor, basis, device: str) -> dict:
    """float32 edges on a given (float64) basis: edges_s and the graph (basis_s is the basis's)."""
    from intermod import analysis as ia

    t = time.perf_counter()
    g = ia.build_graph(model, X, basis, progress=False, device=device, dtype=torch.float32)
    return {"edges_s": time.perf_counter() - t, "_graph": g}


def float32_row(width: int, X: torch.Tensor, device: str, repeats: int, float64_rows: list[dict] = ()) -> dict:
    """float32 compute against float64 on one model: speed-up, relative error of Λ and E, for
    float32 everywhere and for float32 edges on the float64 basis ("mixed"). As in
    :func:`mlp_rows`, the three run in ``repeats`` interleaved passes and each stage's best is
    kept (mixed: the float64 basis's best + its own edges' best). The float64 stage times are
    the best over these passes and the rows of ``float64_rows`` for the same width and target
    (the main table's runs of the same work): a slow spell that covers every float64 pass of
    this row would otherwise pass for a float32 speed-up. "floor": the error of E that
    rounding only the *inputs* to float32 causes in an exact float64 run, i.e. the conditioning
    of the basis itself, which no float32 basis can beat."""
    model = mlp(width)
    out: dict = {"width": width, "n": X.shape[0]}
    for target in ("output", "next_layer"):
        runs: dict[str, dict] = {}
        for _ in range(repeats):
            for mode, dt in (("float64", torch.float64), ("float32", torch.float32), ("mixed", None)):
                keep_fastest(runs, mode, _mixed(model, X, runs["float64"]["_basis"], device) if dt is None
                             else pipeline(model, X, target, device, dtype=dt, modules=False))
        for row in float64_rows:
            if (row["width"], row["target"]) == (width, target):
                keep_fastest(runs, "float64", {k: row[k] for k in ("basis_s", "edges_s")})
        r64, r32, mixed = runs["float64"], runs["float32"], runs["mixed"]
        t64, t32, tmix = (r64["basis_s"] + r64["edges_s"], r32["basis_s"] + r32["edges_s"],
                          r64["basis_s"] + mixed["edges_s"])
        b64, b32 = r64["_basis"], r32["_basis"]
        rounded = pipeline(model, X.float().double(), target, device, modules=False)
        out[target] = {"float64_s": round(t64, 2), "float32_s": round(t32, 2),
                       "speedup": round(t64 / t32, 2),
                       "edges_speedup": round(r64["edges_s"] / r32["edges_s"], 2),
                       "lambda_rel_err": max(_rel_err(b32[n].Lambda, b64[n].Lambda) for n in b64.layers),
                       "edge_rel_err": _edge_err(r32["_graph"], r64["_graph"]), "same_k": r32["k"] == r64["k"],
                       "floor_edge_rel_err": _edge_err(rounded["_graph"], r64["_graph"]),
                       "mixed_s": round(tmix, 2), "mixed_speedup": round(t64 / tmix, 2),
                       "mixed_edges_speedup": round(r64["edges_s"] / mixed["edges_s"], 2),
                       "mixed_edge_rel_err": _edge_err(mixed["_graph"], r64["_graph"])}
    return out


def rib_rows(python: str, checkout: str, widths: list[int], n: int) -> list[dict]:
    """The reference implementation at each width, in its own process (bench/reference.py)."""
    rows = []
    for w in widths:
        peak = matmul_gflops()
        done = subprocess.run([python, str(HERE / "reference.py"), "--width", str(w), "--n", str(n),
                               "--rib", checkout], capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"reference at w {w} failed: {done.stderr[-800:]}", file=sys.stderr)
            continue
        rows.append(dict(json.loads(lines[-1]), matmul_gflops=round(peak, 1)))
    return rows


def one(n: int, width: int, target: str, device: str, hidden: int) -> dict:
    """One scaling point (run in a subprocess): time and peak RSS."""
    model = mlp(width, hidden=hidden)
    pipeline(model, Batches(200, 784), target, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = public(pipeline(model, Batches(n, 784), target, device))
    r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    r["rss_before_mb"] = round(before / 1024, 1)
    if device.startswith("cuda"):
        r["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return r


def sub(n: int, width: int, target: str, device: str, hidden: int = 2) -> dict:
    """One scaling point in a fresh subprocess (so that its peak RSS is its own)."""
    out = subprocess.run([sys.executable, __file__, "--one", str(n), str(width), target, device, str(hidden)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(points: list[dict], width: int, device: str, repeats: int) -> list[dict]:
    """Each point (n, hidden) ``repeats`` times in interleaved passes, each in its own process;
    per point basis_s and edges_s are each the fastest, peak RSS the largest."""
    best: dict[int, dict] = {}
    for _ in range(repeats):
        for i, p in enumerate(points):
            r = dict(p, **sub(p["n"], width, "next_layer", device, p["hidden"]))
            b = keep_fastest(best, i, r)
            b["peak_rss_mb"] = max(b["peak_rss_mb"], r["peak_rss_mb"])
    return [dict(b, total_s=b["basis_s"] + b["edges_s"]) for _, b in sorted(best.items())]


def layered_graph(n_edges: int, layers: int = 4, seed: int = 0):
    from intermod import analysis as ia

    rng = np.random.default_rng(seed)
    k = int(round((n_edges / (layers - 1)) ** 0.5))
    mats = [rng.lognormal(-1.0, 1.5, size=(k, k)) for _ in range(layers - 1)]
    return ia.InteractionGraph.from_arrays([f"l{i}" for i in range(layers)], [np.ones(k)] * layers, mats)


def leiden(n_edges: int) -> dict:
    import random

    import igraph as ig
    from intermod import analysis as ia

    g = layered_graph(n_edges)
    t = time.perf_counter()
    part = ia.find_modules(g, 1e-4, resolution=1.0)
    ours = time.perf_counter() - t
    w_hat = ia.cutoff_strength(g.w, 1e-4)
    keep = w_hat > 0
    raw = ig.Graph(n=g.n_nodes, edges=np.stack([g.src[keep], g.dst[keep]], 1).tolist())
    raw.es["weight"] = w_hat[keep].tolist()
    random.seed(0)
    t = time.perf_counter()
    raw.community_leiden(objective_function="CPM", weights="weight", resolution=1.0, n_iterations=-1)
    bare = time.perf_counter() - t
    return {"edges": g.n_edges, "nodes": g.n_nodes, "find_modules_s": round(ours, 3),
            "igraph_leiden_s": round(bare, 3), "modules": part.n_modules}


def write_results(out: str, res: dict, text: str) -> None:
    """``res`` to OUT.json and ``text`` (its tables) to OUT.md, and print the tables."""
    Path(out + ".json").write_text(json.dumps(res, indent=1))
    Path(out + ".md").write_text(text)
    print(text)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def markdown(res: dict) -> str:
    lines = [f"Machine: {res['machine']}; device: {res['device']}.", "",
             f"**MLP 784-w-w-10, n = {res['mlp'][0]['n']}, float64, basis + edges** (each stage the best of "
             f"{res['repeats']} interleaved passes over the table, total = their sum; matmul: a plain "
             "float64 matmul timed just before each run, the fastest; GFLOP: the "
             "dense floor 2·n·Σ k_{l+1}·h_l·k_l of exact edges; edges / matmul: that floor's rate over the "
             "matmul's; ρ: the share of σ′ ≠ 0 per section, whose rows alone the per-sample GEMMs multiply; "
             "effective: 2·n·Σ k_{l+1}·(ρ_l·h_l + 1)·k_l at the matmul's rate)", "",
             "| w | target | basis s | edges s | total s | matmul GFLOP/s | GFLOP | edges GFLOP/s | "
             "edges / matmul | ρ | effective / matmul | basis share | k |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["mlp"]:
        rho = "/".join(f"{x:.2f}" for x in r["active_share"])
        lines.append(f"| {r['width']} | {r['target']} | {r['basis_s']:.2f} | {r['edges_s']:.2f} | "
                     f"{r['total_s']:.2f} | {r['matmul_gflops']} | {r['floor_gflop']} | {r['edge_gflops']} | "
                     f"{r['edge_share']:.0%} | {rho} | {r['effective_share']:.0%} | {r['basis_share']:.0%} | {r['k']} |")
    if res.get("rib"):
        lines += ["", "**Against the reference implementation** (rib, basis jacobian, edges squared, "
                  "same weights and inputs, its own process; ratio = rib total / intermod total)", "",
                  "| w | n | rib basis s | rib edges s | rib total s | matmul GFLOP/s | × next_layer | × output |",
                  "|---|---|---|---|---|---|---|---|"]
        ours = {(r["width"], r["target"]): r["total_s"] for r in res["mlp"]}
        for r in res["rib"]:
            ratio = {t: r["total_s"] / ours[(r["width"], t)] for t in ("next_layer", "output") if (r["width"], t) in ours}
            lines.append(f"| {r['width']} | {r['n']} | {r['basis_s']:.2f} | {r['edges_s']:.2f} | {r['total_s']:.2f} | "
                         f"{r['matmul_gflops']} | {ratio.get('next_layer', float('nan')):.1f}× | "
                         f"{ratio.get('output', float('nan')):.1f}× |")
    f = res["float32"]
    lines += ["", f"**float32 compute, float64 accumulation** (w = {f['width']}, n = {f['n']}, each stage "
              f"the best of {res['repeats']} interleaved passes, float64's also over the main table's runs of the same "
              "width; relative errors against float64 on the Λ above 1e-3 of their maximum and "
              "the E above 1e-6 of theirs, i.e. w > 1e-3·max w; mixed: the float64 basis, float32 edges; "
              "floor: float64 throughout on the inputs rounded to float32)", "",
              "| target | float64 s | float32 s | speed-up (edges alone) | max rel. err Λ | max rel. err E "
              "| floor: err E | same k (else: leading block) | mixed s | speed-up (edges alone) "
              "| mixed max rel. err E |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in ("output", "next_layer"):
        r = f[t]
        lines.append(f"| {t} | {r['float64_s']} | {r['float32_s']} | {r['speedup']}× ({r['edges_speedup']}×) | "
                     f"{r['lambda_rel_err']:.1e} | {r['edge_rel_err']:.1e} | {r['floor_edge_rel_err']:.1e} | "
                     f"{r['same_k']} | {r['mixed_s']} | {r['mixed_speedup']}× ({r['mixed_edges_speedup']}×) | "
                     f"{r['mixed_edge_rel_err']:.1e} |")
    lines += ["", "**Scaling with n** (next_layer target, w = 100, streamed batches of 512; each point in its own "
              f"process, each stage the best of {res['repeats']} interleaved passes)", "",
              "| n | basis s | edges s | total s | peak RSS MB |", "|---|---|---|---|---|"]
    for r in res["n_scaling"]:
        lines.append(f"| {r['n']} | {r['basis_s']:.2f} | {r['edges_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mb']} |")
    lines += ["", "**Scaling with depth** (next_layer target, w = 100, n = 2000, as above)", "",
              "| hidden layers | total s | s per section | peak RSS MB |", "|---|---|---|---|"]
    for r in res["depth_scaling"]:
        lines.append(f"| {r['hidden']} | {r['total_s']:.2f} | {r['total_s'] / (r['hidden'] + 1):.3f} | {r['peak_rss_mb']} |")
    lines += ["", "**Leiden** (CPM, layered graph of 4 layers)", "",
              "| edges | nodes | find_modules s | raw igraph community_leiden s |", "|---|---|---|---|"]
    for r in res["leiden"]:
        lines.append(f"| {r['edges']} | {r['nodes']} | {r['find_modules_s']} | {r['igraph_leiden_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=5, metavar=("N", "WIDTH", "TARGET", "DEVICE", "HIDDEN"), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small widths and sweeps (a smoke test)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rib", nargs=2, metavar=("PYTHON", "CHECKOUT"),
                    help="time the reference implementation with this interpreter and rib checkout")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.one:
        n, width, target, device, hidden = args.one
        print(json.dumps(one(int(n), int(width), target, device, int(hidden))))
        return
    widths = [50, 100] if args.quick else [100, 400, 800]
    X = inputs(400 if args.quick else 2000)
    pipeline(mlp(50), X[:200], "next_layer", args.device)    # warm-up (allocator, first calls)
    res = {"machine": machine(), "device": args.device, "repeats": args.repeats}
    res["mlp"] = mlp_rows(widths, X, args.device, args.repeats)
    print(json.dumps(res["mlp"], indent=1), flush=True)
    if args.rib:
        res["rib"] = rib_rows(args.rib[0], args.rib[1], widths, X.shape[0])
        print(json.dumps(res["rib"], indent=1), flush=True)
    res["float32"] = float32_row(100 if args.quick else 400, X, args.device, args.repeats, res["mlp"])
    print(json.dumps(res["float32"], indent=1), flush=True)
    ns = [1000, 10000] if args.quick else [1000, 10000, 100000]
    res["n_scaling"] = scaling([dict(n=n, hidden=2) for n in ns], 100, args.device, args.repeats)
    depths = [2, 4] if args.quick else [2, 4, 8]
    res["depth_scaling"] = scaling([dict(n=X.shape[0], hidden=h) for h in depths], 100, args.device, args.repeats)
    res["leiden"] = [leiden(e) for e in ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])]
    write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
