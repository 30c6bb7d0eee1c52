"""One MLP written three ways: basis + edges, same weights and inputs.

    python bench/class_models.py [--widths 100 400] [--n 2000] [--repeats 2] [--out bench/class_results]

The MLP 784-w-w-10 of bench/run.py as
- "Sequential": the ``nn.Sequential`` of bench/run.py, layers "0", "2", "4";
- "functional": a class holding fc1…fc3 whose forward calls ``torch.relu`` between them,
  layers "fc1", "fc2", "fc3";
- "blocks": a ``ModuleList`` of Linear-then-ReLU blocks, cut at the blocks ("layers.0", …),
  as the reference implementation names its MLP's node layers.
The classes are read as the chain of modules they apply (core/sequence.py), so all three should
take the same closed forms and the same time; each (width, target, model) is the best of
``repeats`` runs in one process, beside the plain float64 matmul rate timed in the same run.

Then a residual MLP, 784 → 256, two blocks x + W₂ ReLU(W₁ x) of width 1024 cut at the blocks,
256 → 10, with the residual units' closed form against ``structured=False`` (batched VJPs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import inputs, machine, matmul_gflops, mlp, pipeline, write_results  # noqa: E402


class Block(nn.Module):
    def __init__(self, linear: nn.Linear, relu: bool):
        super().__init__()
        self.linear, self.activation = linear, (nn.ReLU() if relu else None)

    def forward(self, x):
        x = self.linear(x)
        return x if self.activation is None else self.activation(x)


class Blocks(nn.Module):
    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.layers = nn.ModuleList([Block(lin, i < len(linears) - 1) for i, lin in enumerate(linears)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Functional(nn.Module):
    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = linears

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ResidualBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class ResidualMLP(nn.Module):
    def __init__(self, d: int = 256, h: int = 1024, blocks: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out = nn.Linear(784, d), nn.Linear(d, 10)
        self.blocks = nn.ModuleList([ResidualBlock(d, h) for _ in range(blocks)])

    def forward(self, x):
        x = torch.relu(self.inp(x))
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def models(width: int) -> dict[str, tuple[nn.Module, list[str]]]:
    seq = mlp(width)
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    return {"Sequential": (seq, ["0", "2", "4", "output"]),
            "functional": (Functional(linears), ["fc1", "fc2", "fc3", "output"]),
            "blocks": (Blocks(linears), ["layers.0", "layers.1", "layers.2", "output"])}


def time_one(model: nn.Module, layers: list[str], X: torch.Tensor, target: str, repeats: int,
             structured: bool = True) -> dict:
    """Each stage's best over ``repeats`` runs of bench/run.py's pipeline."""
    runs = [pipeline(model, X, target, modules=False, layers=layers, structured=structured) for _ in range(repeats)]
    best = {k: min(r[k] for r in runs) for k in ("basis_s", "edges_s")}
    return {k: round(v, 3) for k, v in best.items()} | {"total_s": round(best["basis_s"] + best["edges_s"], 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "class_results"))
    args = ap.parse_args(argv)
    X = inputs(args.n)
    res: dict = {"machine": machine(), "matmul_gflops": round(matmul_gflops(), 1), "n": args.n, "rows": []}
    for w in args.widths:
        for target in ("next_layer", "output"):
            for name, (model, layers) in models(w).items():
                row = {"width": w, "target": target, "model": name} | time_one(model, layers, X, target, args.repeats)
                print(row, flush=True)
                res["rows"].append(row)
    residual = ResidualMLP().double()
    for target in ("next_layer", "output"):
        for structured in (True, False):
            row = {"width": 256, "target": target, "model": "residual MLP, " + ("closed form" if structured else "VJPs")}
            row |= time_one(residual, ["blocks.0", "blocks.1", "out", "output"], X, target, 1, structured)
            print(row, flush=True)
            res["rows"].append(row)
    lines = [f"MLP 784-w-w-10, n = {args.n}, float64, basis + edges in seconds (best of {args.repeats}); "
             f"matmul {res['matmul_gflops']} GFLOP/s; {res['machine']}", "",
             "| w | target | model | basis s | edges s | total s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['target']} | {r['model']} | {r['basis_s']} | {r['edges_s']} | {r['total_s']} |"
              for r in res["rows"]]
    lines += ["", "residual MLP: 784 → 256, two blocks x + W₂ ReLU(W₁ x) of width 1024, 256 → 10 (one run each)"]
    write_results(args.out, res, "\n".join(lines) + "\n")
    return res


if __name__ == "__main__":
    main()
