"""A ResNet-18-shaped network end to end: basis, edges, modules from ablation, module cut,
module effects and the module report, each stage timed, float64 (and basis + edges in float32).

    python bench/resnet.py [--width 16] [--size 16] [--n 64] [--out bench/resnet_results]

The network: a 3×3 stem conv(3→w)-BN-ReLU, four stages of two torchvision-style BasicBlocks
(w, 2w, 4w, 8w channels, the first block of stages 2–4 strided with a 1×1 projection shortcut),
global average pool, Linear → 10; random weights, batch norms with random running statistics,
n random 3-channel size×size maps. Cut at the eight blocks, the average pool and the output,
output target (the default). The plain float64 matmul rate is timed in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conv_models import BasicBlock, _statistics  # noqa: E402
from run import machine, matmul_gflops, write_results  # noqa: E402

LAYERS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["avgpool", "output"]


class ResNet18(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        c = width
        for i, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c, out, 1 if i == 0 else 2), BasicBlock(out, out)))
            c = out
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def network(width: int) -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18(width)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            _statistics(bn)
    return model.double().eval()


def run(width: int, size: int, n: int) -> dict:
    from intermod import analysis as ia

    model = network(width)
    X = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seconds: dict[str, float] = {}

    def timed(stage, fn):
        start = time.perf_counter()
        out = fn()
        seconds[stage] = round(time.perf_counter() - start, 2)
        return out

    opts = dict(batch_size=64, progress=False)
    basis = timed("basis", lambda: ia.compute_basis(model, X, LAYERS, **opts))
    graph = timed("edges", lambda: ia.build_graph(model, X, basis, **opts))
    auto = timed("modules_from_ablation", lambda: ia.modules_from_ablation(model, X, graph, loss="mse", progress=False))
    timed("module_cut", lambda: ia.module_cut(model, X, graph, auto.partition, progress=False))
    fx = timed("module_effects", lambda: ia.module_effects(model, X, graph, auto.partition, progress=False))
    timed("module_report", lambda: ia.module_report(model, X, graph, auto.partition, effects=fx, progress=False))
    f32 = dict(opts, dtype=torch.float32)
    basis32 = timed("basis float32", lambda: ia.compute_basis(model, X, LAYERS, **f32))
    timed("edges float32", lambda: ia.build_graph(model, X, basis32, **f32))
    return {"width": width, "size": size, "n": n, "k": [len(basis[name].Lambda) for name in LAYERS],
            "epsilon": auto.epsilon, "n_modules": len(auto.partition.modules), "seconds": seconds}


def markdown(res: dict) -> str:
    r = res["row"]
    lines = [f"machine: {res['machine']}; float64 matmul {res['matmul_gflops']} GFLOP/s in the same run", "",
             f"ResNet-18-shaped, width {r['width']}, {r['size']}×{r['size']} maps, n = {r['n']}, "
             f"k per layer {r['k']}, ε = {r['epsilon']:.3g}, {r['n_modules']} modules", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {s} |" for stage, s in r["seconds"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "resnet_results"))
    args = ap.parse_args()
    res = {"machine": machine(), "matmul_gflops": round(matmul_gflops(), 1),
           "row": run(args.width, args.size, args.n)}
    write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
