"""Transformer benchmarks: MiniLM on the built-in sentences, and the modular-addition model.

    python bench/transformer_models.py [--out bench] [--sentences 300] [--edge-sentences 300] [--edge-probes 0]

1. MiniLM (all-MiniLM-L6-v2, offline): interaction basis of the residual stream
   (encoder.layer.0 … 5 and last_hidden_state) on the sentences with random probes, graph
   (exact edges by default, ``--edge-probes 1`` for the one-probe estimate) on
   ``--edge-sentences`` of them, modules; seconds and peak memory per stage, kept directions, top Λ.
2. The modular-addition transformer (shipped weights): accuracy, basis/graph/modules on all
   p² inputs, Fourier labels of the directions and the module–frequency alignment.

Writes ``transformers.json`` and the plots ``minilm_graph.png``, ``modadd_graph.png`` under
``--out``; prints the JSON. Each part runs in its own subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def minilm(out: Path, n_sentences: int, edge_sentences: int, n_probes: int, edge_probes: int | None,
           epsilon: float) -> dict:
    """Part 1 (run in this process): MiniLM summary plus its graph plot."""
    from intermod import analysis as ia
    from intermod.analysis.examples import minilm as ex

    result = ex.analyse(n_sentences=n_sentences, n_probes=n_probes, edge_probes=edge_probes,
                        edge_sentences=edge_sentences, epsilon=epsilon)
    ia.plot_graph(result.graph, result.partition, out / "minilm_graph.png",
                  title=f"MiniLM residual stream, {result.n_tokens} tokens")
    return result.summary()


def modadd(out: Path, epsilon: float) -> dict:
    """Part 2 (run in this process): modular-addition summary plus its graph plot."""
    from intermod import analysis as ia
    from intermod.analysis.examples import modadd as ex

    t = time.perf_counter()
    result = ex.analyse(epsilon=epsilon)
    ia.plot_graph(result.graph, result.partition, out / "modadd_graph.png",
                  title="modular addition (p = 59), modules vs Fourier frequencies")
    summary = result.summary()
    summary["total_s"] = round(time.perf_counter() - t, 2)
    return summary


def _subprocess(part: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--out", str(args.out),
           "--sentences", str(args.sentences), "--edge-sentences", str(args.edge_sentences),
           "--probes", str(args.probes), "--edge-probes", str(args.edge_probes)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--edge-sentences", type=int, default=300)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--edge-probes", type=int, default=0, help="probes over positions for the edges; 0: exact")
    parser.add_argument("--part", choices=["minilm", "modadd"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "minilm":
        print(json.dumps(minilm(args.out, args.sentences, args.edge_sentences, args.probes, args.edge_probes or None, 1e-2)))
        return {}
    if args.part == "modadd":
        print(json.dumps(modadd(args.out, 1e-2)))
        return {}
    report = {
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "minilm": _subprocess("minilm", args),
        "modadd": _subprocess("modadd", args),
    }
    (args.out / "transformers.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
