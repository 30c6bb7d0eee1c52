"""Degeneracy diagnostics: known degeneracies are counted exactly (CPU, float64, small nets).

Every network below has a hand-derived number of free directions; the behavioural-gradient
rank (= rank of the behavioural-loss Hessian) of the same network is the independent check:
in all of these cases the counting rules are tight, n_free_lower_bound = n_params − rank H.
"""

import itertools
import json

import numpy as np
import pytest
import torch
from intermod.analysis.diagnostics import DegeneracyReport, diagnose, plot_spectra
from intermod.analysis.diagnostics.behavioural import behavioural_gradients, behavioural_rank, rank_eps
from intermod.analysis.diagnostics.synchrony import (
    SyncAccumulator,
    approximate_blocks,
    block_measure,
    exact_blocks,
    firing_pattern,
    synchronisation,
)
from torch import nn
from torch.func import functional_call

D = torch.float64
EPS = 1e-12


def mlp(*widths, act=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    mods = []
    for a, b in itertools.pairwise(widths):
        mods += [nn.Linear(a, b), act()]
    return nn.Sequential(*mods[:-1]).to(D)


def data(n=300, d=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D)


def run(model, x, layers, eps=EPS, **kw):
    return diagnose(model, x, layers, eps, progress=False, **kw)


def assert_tight(r):
    """The counted free directions are exactly the Hessian's null space."""
    assert r.behavioural_rank_numerical is not None
    assert r.n_free_lower_bound == r.n_params - r.behavioural_rank_numerical


# ----------------------------------------------------------------------------- known degeneracy
def test_generic_relu_net_has_only_the_rescalings():
    m = mlp(4, 5, 3)
    r = run(m, data(), ["0", "2"])
    l0, l2 = r.layers["0"], r.layers["2"]
    assert (l0.rank_G, l0.d_in_aug, l0.rank_J, l0.d_out) == (5, 5, 5, 5)
    assert (l2.rank_G, l2.d_in_aug, l2.rank_J, l2.d_out) == (6, 6, 3, 3)
    assert l0.n_free == 0 and l2.sync_blocks == [] and l2.n_free_rescaling == 5
    assert r.n_free_lower_bound == 5 and r.n_params == 43
    assert_tight(r)


def test_duplicated_neuron():
    m = mlp(4, 6, 2)
    with torch.no_grad():
        m[0].weight[1] = m[0].weight[0]
        m[0].bias[1] = m[0].bias[0]
    r = run(m, data(), ["0", "2", "output"])
    hid = r.layers["2"]
    # one missing activation direction (f_0 − f_1 = 0) -> d_out = 2 free weights of W2
    assert hid.rank_G == 6 and hid.d_in_aug == 7 and hid.missing_G == 1
    assert hid.n_free_activation == 2 and hid.n_free_jacobian == 0
    # the pair is exactly synchronised; its preactivations span 1 dimension (eq. 21)
    assert hid.sync_blocks == [[0, 1]] and hid.sync_blocks_exact == [[0, 1]]
    assert hid.sync_block_s == [1] and hid.sync_block_k == [2]
    assert hid.n_free_sync_naive == 2      # docs/design.md's Σ|S_a|² − d, before the correction
    assert hid.n_free_sync == 0            # already counted by the activation rule
    assert hid.n_free_rescaling == 6
    assert r.layers["0"].n_free == 0 and r.layers["output"].n_free == 0
    assert r.n_free_lower_bound == 8
    assert_tight(r)


def test_three_identical_neurons_naive_sync_count_would_overcount():
    m = mlp(4, 5, 4)
    with torch.no_grad():
        m[0].weight[1:3] = m[0].weight[0]
        m[0].bias[1:3] = m[0].bias[0]
    r = run(m, data(), ["0", "2"])
    hid = r.layers["2"]
    assert hid.missing_G == 2 and hid.n_free_activation == 8
    assert hid.sync_blocks == [[0, 1, 2]] and hid.sync_block_s == [1]
    assert hid.n_free_sync_naive == 6 and hid.n_free_sync == 0
    assert r.n_free_lower_bound == 13
    assert r.n_params - r.behavioural_rank_numerical == 13   # 13 < 13 + 6: naive overcounts
    assert_tight(r)


def test_dead_neurons():
    m = mlp(4, 6, 3)
    with torch.no_grad():
        m[0].weight[[1, 4]] = 0.0
        m[0].bias[[1, 4]] = -1.0
    r = run(m, data(), ["0", "2"])
    l0, hid = r.layers["0"], r.layers["2"]
    # Jacobian at the preactivation misses the 2 dead neurons -> (4+1) weights each
    assert l0.rank_J == 4 and l0.missing_J == 2 and l0.n_free_jacobian == 10
    assert l0.missing_G == 0 and l0.n_free == 10
    # their activations are 0 -> 2 missing activation directions -> d_out = 3 weights each
    assert hid.missing_G == 2 and hid.n_free_activation == 6
    # dead neurons share the "off" pattern, but they are reported as dead, not as a block
    assert hid.dead_neurons == [1, 4] and hid.n_dead == 2 and r.layers["0"].n_dead == 0
    assert hid.sync_blocks_exact == [] and hid.sync_blocks == [] and hid.sync_block_k == []
    assert hid.n_free_sync == 0 and hid.n_free_sync_naive == 0
    assert hid.n_free_rescaling == 4
    assert r.n_free_lower_bound == 20
    assert r.n_free_by_source == {"activation": 6, "jacobian": 10, "rescaling": 4,
                                  "synchronisation": 0, "overlap": 0}
    assert_tight(r)


def test_many_dead_neurons_are_dead_not_one_synchronised_block():
    """12 dead neurons next to a duplicated live pair (issue 11): the pair is the only block,
    the dead ones are found by a direct forward pass, and counts stay exact."""
    m = mlp(4, 16, 3)
    dead = list(range(2, 14))
    with torch.no_grad():
        m[0].weight[dead] = 0.0
        m[0].bias[dead] = -1.0
        m[0].weight[15] = m[0].weight[14]
        m[0].bias[15] = m[0].bias[14]
    x = data()
    with torch.no_grad():
        silent = (m[1](m[0](x)) == 0).all(0)
    r = run(m, x, ["0", "2"])
    hid = r.layers["2"]
    assert hid.dead_neurons == torch.nonzero(silent).flatten().tolist() == dead
    assert hid.n_dead == 12 and hid.sync_blocks == [[14, 15]] == hid.sync_blocks_exact
    assert all(not set(b) & set(dead) for b in hid.sync_blocks)
    # a huge tolerance merges live neurons into blocks, never a dead one
    loose = run(m, x, ["0", "2"], sync_tol=1e6).layers["2"]
    assert loose.dead_neurons == dead and all(not set(b) & set(dead) for b in loose.sync_blocks)
    assert "dead=12" in r.summary()
    assert_tight(r)


def test_inputs_confined_to_a_subspace():
    x = data()
    x[:, 3] = x[:, 0] - 2 * x[:, 1]
    r = run(mlp(4, 5, 3), x, ["0", "2"])
    l0 = r.layers["0"]
    assert l0.rank_G == 4 and l0.missing_G == 1 and l0.rank_G_numerical == 4
    assert l0.n_free_activation == 5 and l0.n_free_jacobian == 0
    assert r.n_free_lower_bound == 5 + 5
    assert_tight(r)


def test_dead_end_neuron_is_a_missing_jacobian_direction():
    m = mlp(4, 5, 3)
    with torch.no_grad():
        m[2].weight[:, 2] = 0.0          # neuron 2's output is ignored downstream
    r = run(m, data(), ["0", "2"])
    l0, hid = r.layers["0"], r.layers["2"]
    assert l0.missing_J == 1 and l0.n_free_jacobian == 5 and l0.missing_G == 0
    assert hid.missing_G == 0 and hid.n_free_rescaling == 4    # no rescaling for neuron 2
    assert r.n_free_lower_bound == 9
    assert_tight(r)


def test_layer_whose_output_is_ignored_downstream():
    m = mlp(4, 5, 5, 3)
    with torch.no_grad():
        m[4].weight.zero_()              # y = b: everything before the last Linear is free
    r = run(m, data(), ["0", "2", "4"])
    l0, l2, l4 = (r.layers[k] for k in ("0", "2", "4"))
    assert (l0.rank_J, l2.rank_J) == (0, 0)
    assert l0.n_free == 5 * 5 and l2.n_free == 5 * 6          # all of W0|b0 and W2|b2
    assert l0.n_free_overlap == 25 and l2.n_free_overlap == 30  # counted once, not twice
    assert l4.n_free == 0                                      # W4 is used (it is zero)
    assert r.n_free_lower_bound == 55 and r.n_params == 73
    assert_tight(r)


def test_planted_synchronised_block():
    m = mlp(4, 5, 3)
    x = data()
    x[:, 1] = x[:, 1].abs() * x[:, 0].sign()
    x[:, 3] = x[:, 3].abs() * x[:, 0].sign()
    with torch.no_grad():   # neurons 0, 1, 2 fire exactly when x0 > 0, independent preactivations
        m[0].weight[:3] = torch.tensor([[1.0, 0, 0, 0], [2.0, 0.5, 0, 0], [0.5, 0, 0, 0.3]])
        m[0].bias[:3] = 0.0
    r = run(m, x, ["0", "2"])
    hid = r.layers["2"]
    assert hid.nonlinearity == "1"
    assert hid.sync_blocks == [[0, 1, 2]] and hid.sync_block_sizes == [3]
    assert hid.sync_block_s == [3] and hid.sync_block_k == [3]
    assert hid.n_free_sync == 3 * 3 - 3 == hid.n_free_sync_naive   # Σ|S_a|² − |S_a|
    assert r.n_free_lower_bound == 6 + 5
    assert_tight(r)


def test_counts_without_bias():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)).to(D)
    x = data()
    x[:, 3] = 2 * x[:, 2]
    r = run(m, x, ["0", "2"])
    l0 = r.layers["0"]
    assert l0.has_bias is False and l0.d_in_aug == 4 and l0.missing_G == 1
    assert l0.n_free_activation == 5
    assert_tight(r)


# ----------------------------------------------------------------------------- behavioural
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_hessian_at_zero_loss_is_twice_the_gradient_gram(act):
    m = mlp(3, 4, 2, act=act, seed=2)
    x = data(n=7, d=3, seed=4)
    names = [k for k, _ in m.named_parameters()]
    shapes = [v.shape for _, v in m.named_parameters()]
    theta = torch.cat([v.detach().reshape(-1) for v in m.parameters()])
    y_star = m(x).detach()

    def loss(th):   # L(θ) = (1/n) Σ_x ‖y(x; θ) − y(x; θ*)‖², zero at θ = θ*
        ps, i = {}, 0
        for k, s in zip(names, shapes):
            n = int(np.prod(s))
            ps[k] = th[i:i + n].reshape(s)
            i += n
        return ((functional_call(m, ps, (x,)) - y_star) ** 2).sum() / x.shape[0]

    assert loss(theta).item() == 0.0
    H = torch.autograd.functional.hessian(loss, theta)
    Gmat = behavioural_gradients(m, x.split(3), output_fn=lambda o: o)
    assert Gmat.shape == (theta.numel(), x.shape[0] * 2)
    torch.testing.assert_close(H, (2 / x.shape[0]) * Gmat @ Gmat.T, rtol=1e-10, atol=1e-12)
    res = behavioural_rank(m, x.split(3), 0.0, output_fn=lambda o: o)
    assert torch.linalg.matrix_rank(H).item() == res.rank_numerical == res.rank
    assert res.rank == 14 if act is nn.Tanh else res.rank <= 14     # min(P = 26, n·d_out = 14)
    # eigenvalues of H/2, the spectrum compared with ε
    top = torch.linalg.eigvalsh(H).flip(0)[: len(res.spectrum)].numpy() / 2
    np.testing.assert_allclose(res.spectrum[: res.rank], top[: res.rank], rtol=1e-8)


def test_behavioural_gram_switches_to_parameter_side_without_changing_the_spectrum():
    m = mlp(3, 4, 2, act=nn.Tanh, seed=2)
    x = data(n=40, d=3, seed=4)          # N·d_out = 80 > P = 26: P×P Gram
    a = behavioural_rank(m, x.split(5), 0.0, output_fn=lambda o: o)
    Gmat = behavioural_gradients(m, x.split(40), output_fn=lambda o: o)
    ref = np.linalg.eigvalsh((Gmat.T @ Gmat / 40).numpy())[::-1][: len(a.spectrum)]
    np.testing.assert_allclose(a.spectrum, ref, rtol=1e-9, atol=1e-13)


def test_behavioural_rank_refused_for_large_models():
    m = mlp(4, 5, 3)
    r = run(m, data(n=50), ["0", "2"], behavioural_max_params=10)
    assert r.behavioural_rank is None and r.behavioural_spectrum is None
    assert "43" in r.behavioural_reason and "behavioural_max_params=10" in r.behavioural_reason
    assert r.n_free_lower_bound == 5       # the counts do not need it


def test_rank_eps_definition():
    lam = np.array([1.0, 1e-3, 1e-6, 1e-14, 0.0])
    assert rank_eps(lam, 0.0) == 3                 # relative floor 1e-10
    assert rank_eps(lam, 1e-4) == 2
    assert rank_eps(lam, 1e-4, scale=1e-2) == 1    # 1e-3·1e-2 = 1e-5 < ε
    assert rank_eps(lam, 2.0) == 0
    assert rank_eps(np.zeros(3), 0.0) == 0


def test_epsilon_moves_small_directions_into_the_free_count():
    x = data()
    x[:, 3] = x[:, 0] + 1e-4 * x[:, 3]             # a direction of variance ~1e-8
    m = mlp(4, 5, 3)
    exact = run(m, x, ["0", "2"], eps=0.0).layers["0"]
    coarse = run(m, x, ["0", "2"], eps=1e-4).layers["0"]
    assert exact.rank_G == 5 and exact.missing_G == 0
    assert coarse.rank_G == 4 and coarse.n_free_activation == 5
    small = exact.spectrum_G[-1] * exact.scale_G
    assert small < 1e-4                            # the cut-off, in loss units


# ----------------------------------------------------------------------------- synchronisation
def test_eq20_measure_matches_a_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(50, 4, generator=g, dtype=D)
    f = torch.relu(p)
    acc = SyncAccumulator(4)
    for pb, fb in zip(p.split(7), f.split(7)):
        acc.add(pb, fb)
    r = firing_pattern(p, f)
    ref = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i != j:
                ref[i, j] = (((r[:, i] - r[:, j]) * p[:, i]) ** 2
                             + ((r[:, j] - r[:, i]) * p[:, j]) ** 2).mean()
    np.testing.assert_allclose(acc.delta2(), ref, rtol=1e-10, atol=1e-14)
    assert block_measure(acc.delta2(), [0, 2]) == pytest.approx(ref[0, 2])


def test_exact_blocks_and_leaky_patterns():
    p = torch.tensor([[1.0, 2.0, -1.0, 3.0], [-1.0, -0.5, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0]], dtype=D)
    f = nn.LeakyReLU(0.1)(p)
    acc = SyncAccumulator(4)
    acc.add(p, f)
    # p = 0 counts as "on" (r = 1, eq. 17): neurons 0 and 1 agree on all three samples
    assert exact_blocks(acc.mismatch()) == [[0, 1], [2], [3]]
    assert synchronisation(acc, 0.0).blocks_exact == [[0, 1]]


@pytest.mark.parametrize("eta", [1e-1, 1e-2])
def test_approximate_sync_appears_and_disappears_at_the_planted_size(eta):
    x = data(n=2000, d=4, seed=5)
    m = mlp(4, 4, 2, seed=6)
    with torch.no_grad():   # neuron 1 = neuron 0 shifted by eta: patterns differ on x0 ∈ (−eta, 0]
        m[0].weight[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        m[0].weight[1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        m[0].bias[0], m[0].bias[1] = 0.0, eta
    p0, p1 = x[:, 0], x[:, 0] + eta
    differ = (p0 > 0) != (p1 > 0)
    assert differ.any()
    planted = float(((p0 ** 2 + p1 ** 2) * differ).mean())      # eq. 20 by hand
    assert planted < eta ** 2 * 2 * eta                         # O(η³)
    below = run(m, x, ["0", "2"], sync_tol=0.5 * planted).layers["2"]
    above = run(m, x, ["0", "2"], sync_tol=2.0 * planted).layers["2"]
    assert [0, 1] not in below.sync_blocks and below.sync_blocks_exact == []
    assert [0, 1] in above.sync_blocks and above.sync_blocks_exact == []
    i = above.sync_blocks.index([0, 1])
    assert above.sync_measures[i] == pytest.approx(planted, rel=1e-9)


def test_greedy_blocks_respect_the_tolerance():
    d2 = np.array([[0, 1, 5, 9], [1, 0, 2, 9], [5, 2, 0, 9], [9, 9, 9, 0]], dtype=float)
    assert approximate_blocks(d2, 0.5) == [[0], [1], [2], [3]]
    assert approximate_blocks(d2, 1.0) == [[0, 1], [2], [3]]
    assert approximate_blocks(d2, 7.9) == [[0, 1], [2], [3]]    # {0,1,2} costs 8
    assert approximate_blocks(d2, 8.0) == [[0, 1, 2], [3]]
    # exact blocks given as the start are never split
    assert approximate_blocks(d2, 0.0, start=[[0, 3], [1], [2]]) == [[0, 3], [1], [2]]


# ----------------------------------------------------------------------------- report
def test_report_is_plain_json_and_round_trips(tmp_path):
    m = mlp(4, 6, 2)
    with torch.no_grad():
        m[0].weight[1] = m[0].weight[0]
        m[0].bias[1] = m[0].bias[0]
    r = run(m, data(), ["0", "2", "output"])
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = DegeneracyReport.from_dict(json.loads(text))
    assert list(back.layers) == ["0", "2", "output"]
    assert back.layers["2"].sync_blocks == [[0, 1]]
    np.testing.assert_array_equal(back.layers["2"].spectrum_G, r.layers["2"].spectrum_G)
    assert back.n_free_lower_bound == r.n_free_lower_bound == d["n_free_lower_bound"]
    assert d["behavioural_rank"] == r.behavioural_rank and d["n_params"] == 44
    assert sum(d["n_free_by_source"].values()) == d["n_free_lower_bound"]
    for suffix in ("png", "svg"):
        path = plot_spectra(r, str(tmp_path / f"spectra.{suffix}"))
        assert (tmp_path / f"spectra.{suffix}").stat().st_size > 1000 and path.endswith(suffix)


def test_non_linear_consumers_get_spectra_and_a_note():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.LayerNorm(5), nn.Linear(5, 2)).to(D)
    r = run(m, data(n=100), ["0", "2", "3"])
    assert r.layers["0"].rank_J is None and r.layers["0"].n_free == 0
    assert "reaches neither" in r.layers["0"].notes[0]
    assert "LayerNorm" in r.layers["2"].notes[0]
    # LayerNorm outputs sum to zero (weight 1, bias 0 at init): one missing direction
    l3 = r.layers["3"]
    assert l3.rank_J == 2 and l3.missing_G == 1 and l3.n_free == l3.n_free_activation == 2


def _duplicated(d_in=4, d_hid=6, d_out=3):
    m = mlp(d_in, d_hid, d_out)
    with torch.no_grad():
        m[0].weight[1] = m[0].weight[0]
        m[0].bias[1] = m[0].bias[0]
    return m


def test_counts_use_output_jacobians_whatever_the_reported_target():
    # With next_layer, the duplicate's zero-variance direction is dropped from the next basis,
    # so J w.r.t. f̂ would miss a direction that does change the output; counts must not.
    m, x = _duplicated(), data(n=200)
    a = run(m, x, ["0", "2"])
    b = run(m, x, ["0", "2"], jacobian_target="next_layer")
    assert a.n_free_lower_bound == b.n_free_lower_bound == 9
    assert b.layers["0"].rank_J == 6
    assert_tight(b)


def test_positions_are_samples():
    m, x = _duplicated(), torch.randn(30, 5, 4, dtype=D)
    r = run(m, x, ["0", "2"])
    assert r.n_samples == 150 and r.layers["2"].sync_blocks == [[0, 1]]
    assert r.n_free_lower_bound == 9
    assert_tight(r)


def test_shared_relu_module_is_not_counted_silently():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    torch.manual_seed(0)
    r = run(Net().to(D), data(n=100), ["a", "b", "c"])
    assert r.layers["a"].n_free == 0 and r.layers["a"].rank_J is None
    assert "called 2 times" in r.layers["a"].notes[0]
    assert r.layers["c"].rank_J == 2          # c feeds the output directly: still counted


def test_dropout_is_off_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3)).to(D)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = run(m, data(n=200), ["0", "3"])
    assert m.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    # eval mode: Dropout returns its input, so the ReLU output is the next node layer and H has
    # the 5 rescalings of a generic ReLU net only (in train mode the patterns would be random)
    assert r.layers["0"].rank_J == 5 and r.layers["3"].nonlinearity == "1"
    assert r.n_free_lower_bound == 5
    assert_tight(r)


def test_float32_model_is_measured_in_float64_through_the_package_api():
    from intermod import analysis as ia

    m = _duplicated().float()
    r = ia.diagnose(m, data(n=200).float(), ["0", "2"], EPS, progress=False)
    assert next(m.parameters()).dtype == torch.float32          # untouched
    assert r.options["dtype"] == "float64" and r.layers["2"].sync_blocks == [[0, 1]]
    assert r.n_free_lower_bound == 9
    assert_tight(r)


@pytest.mark.parametrize("trial", range(8))
def test_lower_bound_never_exceeds_the_hessian_null_space(trial):
    """Random 3-layer ReLU nets with random planted degeneracies (duplicated, scaled, dead,
    dead-end, always-on neurons; dependent inputs; few samples)."""
    import random

    rng = random.Random(trial)
    torch.manual_seed(trial)
    w = [rng.randint(2, 5), rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 4)]
    m = nn.Sequential(nn.Linear(w[0], w[1]), nn.ReLU(), nn.Linear(w[1], w[2]), nn.ReLU(),
                      nn.Linear(w[2], w[3])).to(D)
    x = torch.randn(rng.choice([20, 60, 200]), w[0], dtype=D)
    with torch.no_grad():
        for L, nxt in ((m[0], m[2]), (m[2], m[4])):
            for _ in range(rng.randint(0, 2)):
                kind = rng.choice(["dup", "dead", "deadend", "on", "scale"])
                i, j = rng.randrange(L.out_features), rng.randrange(L.out_features)
                if kind == "dup":
                    L.weight[j], L.bias[j] = L.weight[i], L.bias[i]
                elif kind == "scale":
                    L.weight[j], L.bias[j] = 2 * L.weight[i], 2 * L.bias[i]
                elif kind == "dead":
                    L.weight[i], L.bias[i] = 0.0, -1.0
                elif kind == "on":
                    L.bias[i] = 50.0
                else:
                    nxt.weight[:, i] = 0.0
        if rng.random() < 0.3:
            x[:, -1] = x[:, 0]
    r = run(m, x, ["0", "2", "4"], eps=0.0)
    assert 0 <= r.n_free_lower_bound <= r.n_params - r.behavioural_rank_numerical
