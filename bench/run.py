"""intermod benchmarks: `make bench` (writes bench/results.md and bench/results.json).

1. The reference pipeline: MLP 784-100-100-10 (random weights), 2000 inputs, float64, full
   basis + edges, both Jacobian targets: seconds per stage, achieved GFLOP/s (counted with
   torch.utils.flop_counter) against a plain float64 matmul timed in the same run.
2. Scaling with n (1e3 … 1e5 samples, streamed batches): time and peak memory (RSS).
3. Scaling with width (hidden 100 … 800).
4. Leiden on layered graphs of 1e4 … 1e6 edges: find_modules against raw igraph.
Each configuration of 2 and 3 runs in a fresh subprocess so peak RSS is its own.
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
LAYERS = ["0", "2", "4", "output"]


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


def mlp(width: int = 100, d_in: int = 784, d_out: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, d_out)).double()


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    """The benchmark's inputs (n, 784), float64 (shared with bench/reference.py)."""
    return torch.randn(n, 784, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def matmul_gflops(n: int = 1500, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def pipeline(model, data, target: str, device: str = "cpu", edge_method: str = "gradient") -> dict:
    from intermod import analysis as ia

    t0 = time.perf_counter()
    basis = ia.compute_basis(model, data, LAYERS, jacobian_target=target, progress=False, device=device)
    t1 = time.perf_counter()
    graph = ia.build_graph(model, data, basis, edge_method=edge_method, progress=False, device=device)
    t2 = time.perf_counter()
    part = ia.find_modules(graph, epsilon=1e-4)
    t3 = time.perf_counter()
    return {"basis_s": t1 - t0, "edges_s": t2 - t1, "modules_s": t3 - t2, "total_s": t3 - t0,
            "stages": {k: round(v, 3) for k, v in basis.timings.items()},
            "k": [basis[n].k for n in LAYERS], "n_edges": graph.n_edges, "n_modules": part.n_modules}


def counted_flops(model, data, target: str) -> float:
    """Floating-point operations of the pipeline, counted by torch's flop counter (matmul-like
    ops only). Its per-module tracker is left out: its backward hooks break autograd.grad."""
    from torch.utils import flop_counter

    counter = flop_counter.FlopCounterMode(display=False)
    with flop_counter._FlopCounterMode(counter):
        pipeline(model, data, target)
    return counter.get_total_flops()


def reference(device: str) -> dict:
    torch.set_num_threads(torch.get_num_threads())
    model = mlp()
    X = inputs(2000)
    pipeline(model, X[:200], "output", device)         # warm-up (vmap, allocator)
    peak = matmul_gflops()
    out = {"matmul_gflops": round(peak, 1)}
    for target in ("output", "next_layer"):
        runs = [pipeline(model, X, target, device) for _ in range(3)]
        best = min(runs, key=lambda r: r["total_s"])
        flops = counted_flops(model, X, target) if device == "cpu" else float("nan")
        best["gflop"] = round(flops / 1e9, 2)
        best["gflops_per_s"] = round(flops / 1e9 / (best["basis_s"] + best["edges_s"]), 1)
        out[target] = best
    return out


def one(n: int, width: int, target: str, device: str) -> dict:
    """One scaling point (run in a subprocess): time and peak RSS."""
    model = mlp(width)
    pipeline(model, Batches(200, 784), target, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = pipeline(model, Batches(n, 784), target, device)
    r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    r["rss_before_mb"] = round(before / 1024, 1)
    if device.startswith("cuda"):
        r["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return r


def sub(n: int, width: int, target: str, device: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(n), str(width), target, device],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    ref = res["reference"]
    lines = [f"Machine: {res['machine']}; device: {res['device']}.", "",
             "**MLP 784-100-100-10, 2000 inputs, float64, basis + edges + modules** "
             f"(plain float64 matmul in the same run: {ref['matmul_gflops']} GFLOP/s)", "",
             "| target | basis s | edges s | modules s | total s | GFLOP | GFLOP/s | stages (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for t in ("output", "next_layer"):
        r = ref[t]
        lines.append(f"| {t} | {r['basis_s']:.2f} | {r['edges_s']:.2f} | {r['modules_s']:.3f} | "
                     f"{r['total_s']:.2f} | {r['gflop']} | {r['gflops_per_s']} | "
                     + ", ".join(f"{k} {v}" for k, v in r["stages"].items()) + " |")
    lines += ["", "**Scaling with n** (output target, width 100, streamed batches of 512)", "",
              "| n | basis s | edges s | total s | peak RSS MB |", "|---|---|---|---|---|"]
    for r in res["n_scaling"]:
        lines.append(f"| {r['n']} | {r['basis_s']:.2f} | {r['edges_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mb']} |")
    lines += ["", "**Scaling with width** (output target, n = 2000)", "",
              "| hidden width | k per layer | total s | peak RSS MB |", "|---|---|---|---|"]
    for r in res["width_scaling"]:
        lines.append(f"| {r['width']} | {r['k']} | {r['total_s']:.2f} | {r['peak_rss_mb']} |")
    lines += ["", "**Leiden** (CPM, layered graph of 4 layers)", "",
              "| edges | nodes | find_modules s | raw igraph community_leiden s |", "|---|---|---|---|"]
    for r in res["leiden"]:
        lines.append(f"| {r['edges']} | {r['nodes']} | {r['find_modules_s']} | {r['igraph_leiden_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=4, metavar=("N", "WIDTH", "TARGET", "DEVICE"), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smaller scaling sweeps")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.one:
        n, width, target, device = int(args.one[0]), int(args.one[1]), args.one[2], args.one[3]
        print(json.dumps(one(n, width, target, device)))
        return
    ns = [1000, 10000] if args.quick else [1000, 10000, 100000]
    widths = [100, 200] if args.quick else [100, 200, 400, 800]
    res = {"machine": machine(), "device": args.device, "reference": reference(args.device)}
    print(json.dumps(res["reference"], indent=1), flush=True)
    res["n_scaling"] = [dict(n=n, **sub(n, 100, "output", args.device)) for n in ns]
    res["width_scaling"] = [dict(width=w, **sub(2000, w, "output", args.device)) for w in widths]
    res["leiden"] = [leiden(e) for e in ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])]
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    Path(args.out + ".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
