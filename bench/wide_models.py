"""Wide layers: the MLP 784-w-w-10 of bench/run.py at w = 1600 and 3072 (GPT-2's MLP width).

    python bench/wide_models.py [--points 1600:2000 3072:500] [--out bench/wide_results]

Each (width, n, target) runs once in its own process (bench/run.py ``--one``: streamed random
inputs, basis + edges + one Leiden search), so its peak RSS is its own; beside it the plain
float64 matmul rate is timed in this process before each point. Printed per point: seconds per
stage, the basis stage's share, the edge stage's rate on the floor of exact edges
(2·n·Σ_l k_{l+1}·h_l·k_l, bench/run.py) against the matmul, and the peak RSS. With n < w/2 the
hidden layers have fewer samples than dimensions (k ≤ n + 1), the case whose G is decomposed from
the samples (core/gram.py, ``ROWS_KEPT``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import floor_gflop, machine, matmul_gflops, mlp, sub, write_results  # noqa: E402


def point(width: int, n: int, target: str) -> dict:
    peak = matmul_gflops()
    r = sub(n, width, target, "cpu")
    gflop = floor_gflop(mlp(width), r["k"], n)
    total = r["basis_s"] + r["edges_s"]
    return {"width": width, "n": n, "target": target, "k": r["k"], "basis_s": round(r["basis_s"], 2),
            "edges_s": round(r["edges_s"], 2), "total_s": round(total, 2), "modules_s": round(r["modules_s"], 2),
            "basis_share": round(r["basis_s"] / total, 3), "floor_gflop": round(gflop, 1),
            "edge_gflops": round(gflop / r["edges_s"], 1), "matmul_gflops": round(peak, 1),
            "edge_share": round(gflop / r["edges_s"] / peak, 2), "peak_rss_mb": r["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", nargs="+", default=["1600:2000", "3072:500"], help="width:n")
    ap.add_argument("--out", default=str(HERE / "wide_results"))
    args = ap.parse_args(argv)
    res: dict = {"machine": machine(), "rows": []}
    for spec in args.points:
        width, n = map(int, spec.split(":"))
        for target in ("next_layer", "output"):
            row = point(width, n, target)
            print(row, flush=True)
            res["rows"].append(row)
    lines = [f"MLP 784-w-w-10, float64, one run per row in its own process; {res['machine']}", "",
             "| w | n | target | k | basis s | edges s | total s | basis share | edge GFLOP/s (floor) | matmul GFLOP/s "
             "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['n']} | {r['target']} | {r['k']} | {r['basis_s']} | {r['edges_s']} | "
              f"{r['total_s']} | {r['basis_share']} | {r['edge_gflops']} | {r['matmul_gflops']} | {r['peak_rss_mb']} |"
              for r in res["rows"]]
    write_results(args.out, res, "\n".join(lines) + "\n")
    return res


if __name__ == "__main__":
    main()
