"""Module report options beyond tests/test_report.py: ±1 probes over output positions
(``n_probes``), probes over sets of directions (``set_attribution``, the report's ``n_probes``)
and ``device`` (tests/test_cuda.py runs reports on a GPU)."""

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core.jacobians import ProbeDraw, probe_signs
from intermod.analysis.report import direction_attribution, set_attribution, top_examples
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


def _set_sums(att, sets: dict) -> dict:
    """The exact per-direction parts of ``att`` summed over each set: {(layer, part): (n_sets, …)}."""
    return {(layer, part): np.stack([getattr(att, part)[layer][att.rows(layer, S)].sum(0) for S in group])
            for layer, group in sets.items() for part in ("energy", "by_position", "by_token")
            if layer in getattr(att, part)}


def test_set_attribution_is_exact_where_that_needs_no_more_cotangents():
    """A set S costs |S|·P exact cotangents (P output positions) or R probes: with R ≥ |S|·P it
    equals the summed exact energies of its directions; with R one less it is estimated."""
    model, ids, graph, sel = token_graph(True)
    mid = next(iter(sel))
    sets = {mid: [[1, 2], [0]], "output": [[1, 2]]}           # |S|·P = 10 and 5, 10
    exact = direction_attribution(model, ids, graph, {mid: [0, 1, 2], "output": [1, 2]}, n_alpha=3, batch_size=7)
    got = set_attribution(model, ids, graph, sets, n_probes=10, n_alpha=3, batch_size=7)
    assert got.sets == sets and got.directions == {mid: [0, 1, 2], "output": [1, 2]}
    assert not got.probed[mid].any() and not got.probed["output"].any()
    for (layer, part), want in _set_sums(exact, sets).items():
        np.testing.assert_allclose(getattr(got, part)[layer], want, rtol=1e-10, atol=1e-14, err_msg=f"{part} at {layer}")
    got = set_attribution(model, ids, graph, sets, n_probes=9, n_alpha=3, batch_size=7)
    assert got.probed[mid].tolist() == [True, False] and got.probed["output"].tolist() == [True]
    np.testing.assert_allclose(got.energy[mid][1], exact.energy[mid][0], rtol=1e-10)


def test_set_probes_against_a_brute_force_estimate():
    """Embedding → Linear: at the embedding's output f̂_i = Σ_a C_ai e_a + c, so probe r of the set
    S gives A_r(s, a) = Σ_{i∈S} r_{s,i} C_ai e_{s,a} / √R at every α (zero baseline): the
    estimate Σ_r A_r² per dimension, position and token, with the signs keyed by (seed, sample,
    valid position, probe, direction) over batches of 7."""
    model, ids, graph, _ = token_graph(False)
    S, R = [1, 2, 3], 2                                       # |S|·P = 15 > R: probed
    got = set_attribution(model, ids, graph, {"1": [S]}, n_probes=R, n_alpha=2, batch_size=7, seed=3)
    assert got.probed["1"].tolist() == [True]
    C = torch.as_tensor(graph.bases["1"][0][:3, S])                            # (d, |S|)
    energy, by_pos = torch.zeros(3), torch.zeros(5)
    for start in range(0, len(ids), 7):
        b = ids[start:start + 7]
        e = model[0].weight.detach()[b]                                        # (B, P, 3)
        signs = probe_signs(ProbeDraw(3, 0, start), torch.ones(b.shape), range(R), len(S)).double()
        A = torch.einsum("rbsj,aj,bsa->rbsa", signs, C, e) / R ** 0.5
        energy += A.square().sum((0, 1, 2))
        by_pos += A.square().sum((0, 1, 3))
    np.testing.assert_allclose(got.energy["1"][0], energy / ids.numel(), rtol=1e-10)
    np.testing.assert_allclose(got.by_position["1"][0], by_pos / ids.numel(), rtol=1e-10)


def test_set_attribution_keeps_the_exact_map_at_the_input_and_refuses_bad_sets():
    """At the model input the map is linear: a set's energy is the exact sum of its directions'
    whatever R; at a hidden layer without positions a set of |S| ≤ R directions is exact too."""
    model, X, graph, _ = mlp_partition()
    sets = {"0": [[1, 2], [3, 4]], "2": [[1, 2, 3]]}
    exact = direction_attribution(model, X, graph, {"0": [1, 2, 3, 4], "2": [1, 2, 3]}, n_alpha=4)
    want = _set_sums(exact, sets)
    for R, probed in ((3, False), (2, True)):
        got = set_attribution(model, X, graph, sets, n_probes=R, n_alpha=4)
        assert got.exact == {"0": True, "2": False}
        assert got.probed["0"].tolist() == [False, False] and got.probed["2"].tolist() == [probed]
        np.testing.assert_allclose(got.energy["0"], want["0", "energy"], rtol=1e-12)
        assert np.allclose(got.energy["2"], want["2", "energy"], rtol=1e-10) != probed
    for bad in (0, None, True, 1.5):
        with pytest.raises(ValueError, match="n_probes"):
            set_attribution(model, X, graph, sets, n_probes=bad)
    with pytest.raises(ValueError, match="at least one direction"):
        set_attribution(model, X, graph, {"0": [[1], []]}, n_probes=2)


def test_report_probes_each_modules_first_layer_as_one_set():
    """``module_report(n_probes=R)``: a module's input shares come from its first-layer set, exact
    while the set has ≤ R cotangents' worth (equal to the exact report), else estimated with R
    probes (its row of ``set_attribution``), and the report's notes say how many were."""
    model, X, _, _ = mlp_partition()
    basis = ia.compute_basis(model, X, ["2", "4", "output"], progress=False)     # first layers hidden
    graph = ia.build_graph(model, X, basis, progress=False)
    part = ia.find_modules(graph, epsilon=1e-5, n_modules=2, seed=0)
    exact = ia.module_report(model, X, graph, part, progress=False)
    sizes = [len(m.directions[m.first_layer]) for m in exact.modules]
    assert {m.first_layer for m in exact.modules} == {"2"} and sorted(sizes) == [1, 3]
    same = ia.module_report(model, X, graph, part, n_probes=3, progress=False)
    for m, e in zip(same.modules, exact.modules):
        assert m.inputs == pytest.approx(e.inputs, rel=1e-10)
    assert not any("probes" in n for n in same.notes)
    R = 2
    probed = ia.module_report(model, X, graph, part, n_probes=R, progress=False)
    sets: dict = {}
    for m in probed.modules:
        sets.setdefault(m.first_layer, []).append(m.directions[m.first_layer])
    att = set_attribution(model, X, graph, sets, n_probes=R, progress=False)
    for m in probed.modules:
        row = att.energy[m.first_layer][att.rows(m.first_layer, m.directions[m.first_layer])].sum(0)
        assert m.inputs == pytest.approx({a: v for a, v in enumerate(row / row.sum()) if v > 0}, rel=1e-10)
    assert att.probed["2"].sum() == 1 and any("input shares of 1 module(s) estimated with 2" in n for n in probed.notes)


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
