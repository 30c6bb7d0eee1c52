"""Module report options beyond tests/test_report.py: ±1 probes over output positions
(``n_probes``) and ``device`` (tests/test_cuda.py runs reports on a GPU)."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.report import direction_attribution, top_examples
from torch import nn

pytestmark = pytest.mark.usefixtures("float64_default")


class CumMean(nn.Module):
    """(B, P, d) -> running mean over positions: output position t reads inputs s ≤ t."""

    def forward(self, x):
        return x.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]


def token_graph(mix: bool):
    """Embedding(7, 3) → Linear → tanh [→ CumMean] → Linear(4, 2) on 30 sequences of 5 tokens."""
    torch.manual_seed(0)
    mods = [nn.Embedding(7, 3), nn.Linear(3, 4), nn.Tanh()] + ([CumMean()] if mix else []) + [nn.Linear(4, 2)]
    model = nn.Sequential(*mods).double()
    ids = torch.randint(0, 7, (30, 5), generator=torch.Generator().manual_seed(1))
    layers = ["1", str(len(mods) - 1), "output"]
    basis = ia.compute_basis(model, ids, layers, progress=False)
    return model, ids, ia.build_graph(model, ids, basis, progress=False), {layers[1]: [0, 1, 2], "output": [0, 1]}


def test_probes_over_positions_estimate_the_exact_sum():
    """Probe r (±1/√R per position) gives A_r = Δ·∫∂⟨r, f̂_i⟩/∂x dα, so Σ_r A_r² = Σ_t A_t² +
    cross terms of mean 0. Where each input position reaches one output position only (no mixing)
    there are no cross terms: equal to the exact sum, which holds only if a sample's probe is
    the same at every α. Across positions (a running mean) the estimate approaches the exact
    sum as R grows: energies, position and token sums within 7e-3 of their max at R = 256
    (4.3e-2 at R = 64). Batches of 7: probes are keyed by the global sample index."""
    for mix, R, tol in ((False, 2, 1e-12), (True, 256, 2e-2)):
        model, ids, graph, sel = token_graph(mix)
        exact = direction_attribution(model, ids, graph, sel, n_alpha=3, batch_size=7)
        probed = direction_attribution(model, ids, graph, sel, n_alpha=3, n_probes=R, batch_size=7)
        for layer in sel:
            for part in ("energy", "by_position", "by_token"):
                want = getattr(exact, part)[layer]
                np.testing.assert_allclose(getattr(probed, part)[layer], want, rtol=0,
                                           atol=tol * float(want.max()), err_msg=f"{part} at {layer}")


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no CUDA device, so "auto" is the CPU and "cuda" is refused on every machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def mlp_partition():
    """A tanh MLP 4 → 6 → 5 → 3 on 40 samples, its graph and a partition into 2 modules."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)) * 1.5
    basis = ia.compute_basis(model, X, ["0", "2", "4", "output"], progress=False)
    graph = ia.build_graph(model, X, basis, progress=False)
    return model, X, graph, ia.find_modules(graph, epsilon=1e-4, n_modules=2, seed=0)


def test_device_cpu_given_explicitly_equals_the_default(no_cuda):
    """device="cpu" (or a torch.device) computes exactly what the default ("auto", the CPU when
    torch sees no CUDA device) does, for the report and its parts."""
    model, X, graph, part = mlp_partition()
    want = ia.module_report(model, X, graph, part, top_k=5).to_dict()
    assert want["modules"][0]["inputs"] and want["modules"][0]["top_examples"]
    for device in ("cpu", torch.device("cpu")):
        assert ia.module_report(model, X, graph, part, top_k=5, device=device).to_dict() == want
    sel = {"2": [0, 1, 2]}
    np.testing.assert_array_equal(direction_attribution(model, X, graph, sel, device="cpu").energy["2"],
                                  direction_attribution(model, X, graph, sel).energy["2"])
    assert (top_examples(model, X, graph, part.membership, device="cpu")
            == top_examples(model, X, graph, part.membership))


@pytest.mark.parametrize("device, message", [("gpu", "device='gpu' is not a torch device"),
                                             ("cuda:x", "device='cuda:x' is not a torch device"),
                                             ("cuda", "device='cuda': torch sees 0 CUDA device"),
                                             (torch.device("cuda", 1), "torch sees 0 CUDA device")])
def test_an_invalid_device_is_a_value_error_naming_it(no_cuda, device, message):
    """Refused before any work, with the same error, by the report (graph-only too), attribution
    and top examples, and by every other entry point that runs the model (core's
    ``resolve_device``: torch itself raised a RuntimeError, or an AssertionError deep in the first
    forward pass for a CUDA device it cannot see)."""
    model, X, graph, part = mlp_partition()
    layers = ["0", "2", "4", "output"]
    basis = ia.compute_basis(model, X, layers, progress=False)
    calls = [lambda: ia.compute_basis(model, X, layers, device=device, progress=False),
             lambda: ia.build_graph(model, X, basis, device=device, progress=False),
             lambda: ia.diagnose(model, X, layers, 1e-4, device=device),
             lambda: ia.module_cut(model, X, graph, part, device=device),
             lambda: ia.module_report(model, X, graph, part, device=device),
             lambda: ia.module_report(None, None, graph, part, device=device),
             lambda: direction_attribution(model, X, graph, {"2": [0]}, device=device),
             lambda: top_examples(model, X, graph, part.membership, device=device)]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()
