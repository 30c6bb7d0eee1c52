"""CNN benchmarks: the conv closed forms and coloured cotangents against the plain VJPs.

    python bench/conv_models.py [--out bench/conv_results] [--quick]

Random-weight CNNs on n random 3-channel H×H maps, float64, basis + edges, layers at the inputs
of the activations (and the output):

- "3×3": conv(3→16)-ReLU-conv(16→32)-ReLU-conv(32→32, stride 2)-ReLU-conv(32→10)-global
  average pool-flatten, the convolutions 3×3 with padding 1: the sections between conv maps are
  [activation] [Conv], so their Grams and edges take the conv closed forms (core/convolution.py);
- "pool": conv(3→16)-ReLU-maxpool 2-conv(16→32)-ReLU-conv(32→10)-pool-flatten: the first
  section [ReLU, MaxPool, Conv] takes the conv closed forms with the pool's argmax selection;
- "batch norm": conv(3→16)-BN-ReLU-conv(16→32)-BN-ReLU-conv(32→10)-pool-flatten: the
  sections [ReLU, Conv, BN] take the closed forms with the batch norm folded into the conv;
- "overlapping pool": a ResNet-like stem, conv(3→16)-BN-ReLU-maxpool(3, stride 2, padding 1)-
  conv(16→32)-ReLU-conv(32→10)-pool-flatten: the section [ReLU, MaxPool 3/2, Conv] has no
  closed form (overlapping windows) and takes coloured cotangents (core/colouring.py);
- "residual": a ResNet-like stack, conv(3→16)-ReLU, two blocks x + conv(ReLU(conv(x))) of 16
  channels (3×3, padding 1) cut at the blocks, conv(16→10, 1×1)-pool-flatten: the blocks take
  the two-convolution closed forms (Grams from paired σ′ moments, edges with the identity's term);
- "torchvision blocks": torchvision's ResNet in small, stem conv(3→16)-BN-ReLU, a BasicBlock of
  16 channels and a downsampling one to 32 (projection shortcut), pool, Linear → 10, cut at the
  blocks: a ReLU after each sum, so no closed form; the blocks take coloured cotangents.
- "depthwise": MobileNet-style separable convolutions, conv(3→32)-ReLU-depthwise 3×3 (32 groups)-
  ReLU-conv 1×1 (32→64)-ReLU-depthwise 3×3 stride 2 (64 groups)-ReLU-conv 1×1 (64→10)-pool-
  flatten, cut at every ReLU: the grouped convolutions take the conv closed forms as ungrouped
  ones with zero blocks (core/structured.py, dense_weight).

The last section (to the 10 logits) is not local and takes batched VJPs of its 10 cotangents.

Each H runs with ``structured=True`` (the default) and, up to --plain-max, with
``structured=False`` (one cotangent per output position and direction: quadratic in the
positions); the relative difference of the edges (w > 1e-3·max) is printed beside the plain
float64 matmul rate timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import machine, matmul_gflops, write_results  # noqa: E402

KINDS = ("3×3", "pool", "batch norm", "overlapping pool", "residual", "torchvision blocks", "depthwise")


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(torch.relu(self.c1(x)))


class ResidualCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 10, 1)
        self.b1, self.b2 = ResidualBlock(16), ResidualBlock(16)

    def forward(self, x):
        x = self.b2(self.b1(torch.relu(self.stem(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1)


class BasicBlock(nn.Module):
    """torchvision's: conv-BN-ReLU-conv-BN, + x or a 1×1 projection, ReLU (one module, twice)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class TorchvisionResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.layer1, self.layer2 = BasicBlock(16, 16), BasicBlock(16, 32, 2)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cnn(kind: str) -> tuple[nn.Module, list[str]]:
    torch.manual_seed(0)
    if kind == "residual":
        return ResidualCNN().double().eval(), ["b1", "b2", "head", "output"]
    if kind == "torchvision blocks":
        m = TorchvisionResNet()
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                _statistics(bn)
        return m.double().eval(), ["layer1", "layer2", "avgpool", "output"]
    if kind == "3×3":
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 10, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return m.double().eval(), ["1", "3", "5", "output"]
    if kind == "pool":
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(32, 10, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return m.double().eval(), ["1", "4", "output"]
    if kind == "depthwise":
        m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                          nn.ReLU(), nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=64),
                          nn.ReLU(), nn.Conv2d(64, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return m.double().eval(), ["1", "3", "5", "7", "output"]
    if kind == "overlapping pool":
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 10, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
        _statistics(m[1])
        return m.double().eval(), ["2", "5", "output"]
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                      nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 10, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten())
    for bn in (m[1], m[4]):
        _statistics(bn)
    return m.double().eval(), ["2", "5", "output"]


def _statistics(bn: nn.BatchNorm2d) -> None:
    """Trained-looking batch-norm statistics and affine parameters."""
    bn.running_mean.normal_(0, 0.3)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_(0, 0.2)


def run(kind: str, H: int, n: int, target: str, structured: bool) -> tuple[dict, np.ndarray]:
    from intermod import analysis as ia

    model, layers = cnn(kind)
    X = torch.randn(n, 3, H, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0 = time.perf_counter()
    basis = ia.compute_basis(model, X, layers, jacobian_target=target, batch_size=64, progress=False,
                             structured=structured)
    t1 = time.perf_counter()
    graph = ia.build_graph(model, X, basis, batch_size=64, progress=False, structured=structured)
    t2 = time.perf_counter()
    return dict(model=kind, H=H, n=n, target=target, structured=structured, basis_s=round(t1 - t0, 2),
                edges_s=round(t2 - t1, 2), total_s=round(t2 - t0, 2)), graph.w


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    big = np.abs(b) > 1e-3 * np.abs(b).max()
    return float((np.abs(a - b)[big] / np.abs(b)[big]).max())


def markdown(res: dict) -> str:
    lines = [f"Machine: {res['machine']}; float64 matmul {res['matmul_gflops']} GFLOP/s (timed in this run).", "",
             "| model | H×H | n | target | structured s (basis / edges) | plain VJPs s (basis / edges) | speed-up "
             "| max rel. diff of w |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        s, p = r["structured"], r.get("plain")
        plain = f"{p['total_s']} ({p['basis_s']} / {p['edges_s']})" if p else "—"
        speed = f"{p['total_s'] / s['total_s']:.0f}×" if p else "—"
        err = f"{r['rel_diff']:.0e}" if p else "—"
        lines.append(f"| {s['model']} | {s['H']}×{s['H']} | {s['n']} | {s['target']} | {s['total_s']} "
                     f"({s['basis_s']} / {s['edges_s']}) | {plain} | {speed} | {err} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "conv_results"))
    ap.add_argument("--quick", action="store_true", help="small maps only (a smoke test)")
    ap.add_argument("--plain-max", type=int, default=16, help="largest H also run with structured=False")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = ap.parse_args()
    sizes = [8] if args.quick else [8, 16, 32]
    res = {"machine": machine(), "matmul_gflops": round(matmul_gflops(), 1), "rows": []}
    for kind in args.kinds:                # warm-up (first calls, allocator)
        run(kind, 8, 8, "next_layer", True)
    for kind in args.kinds:
        for H in sizes:
            for target in ("next_layer", "output"):
                s, w = run(kind, H, 64, target, True)
                row = {"structured": s}
                if H <= args.plain_max and target == "next_layer":
                    p, w_plain = run(kind, H, 64, target, False)
                    row.update(plain=p, rel_diff=rel_err(w, w_plain))
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
    write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
