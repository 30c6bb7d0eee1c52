"""repr of result objects summarises them (shapes, counts), never dumps arrays."""

import numpy as np
import torch
from intermod import analysis as ia
from intermod.analysis.core.reprs import short
from torch import nn


def test_results_print_short_summaries():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 40), nn.ReLU(), nn.Linear(40, 3)).double()
    X = torch.randn(80, 4, dtype=torch.float64)
    layers = ["0", "2", "output"]
    basis = ia.compute_basis(model, X, layers, kind="pca", progress=False)
    graph = ia.build_graph(model, X, basis, progress=False)
    part = ia.find_modules(graph, 1e-3)
    report = ia.diagnose(model, X, layers, 1e-4, progress=False)
    for obj in (basis, basis["2"], graph, part, part.modules[0], report, report.layers["2"]):
        text = repr(obj)
        assert text.startswith(type(obj).__name__ + "(") and "\n" not in text, text
        assert len(text) < 700 and "array([" not in text, text
    assert f"C=array(shape={basis['2'].C.shape}, dtype=float64)" in repr(basis["2"])
    assert f"membership=array(shape=({graph.n_nodes},), dtype=int64)" in repr(part)


def test_short_shows_small_values_and_sizes_of_large_ones():
    assert short(np.array([1.0, 2.0])) == "[1., 2.]"
    assert short(list(range(100))) == "[100 items]"
    assert short({str(i): i for i in range(10)}) == "{10 entries}"
    assert short("x" * 1000).endswith("…") and len(short("x" * 1000)) < 70
