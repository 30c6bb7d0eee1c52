"""Module search: the cost formula by hand, determinism, n_modules, restarts, inactive nodes."""

import math

import numpy as np
import pytest
from intermod import analysis as ia


def hand_graph():
    """Layers a (2 nodes, a0 = constant), b (2), c (2). Strengths chosen to give round ŵ."""
    eps = 1e-4                     # √ε = 0.01
    e = math.e
    ab = np.array([[0.01 * e ** 3, 0.01 * e ** 2],     # b0 <- (a0, a1)
                   [0.0, 0.01 * e ** 1]])              # b1 <- (a0, a1)
    bc = np.array([[0.01 * e ** 4, 0.005],             # c0 <- (b0, b1); 0.005 < √ε: ŵ = 0
                   [0.01 * e ** 0.5, 0.01 * e ** 2]])  # c1 <- (b0, b1)
    g = ia.InteractionGraph.from_arrays(["a", "b", "c"], [np.array([2.0, 1.0])] * 3, [ab, bc],
                                        bias_direction=[True, False, False])
    return g, eps


def test_cutoff_strength():
    w = np.array([0.0, 0.005, 0.01, 0.01 * math.e, 1.0])
    np.testing.assert_allclose(ia.cutoff_strength(w, 1e-4), [0, 0, 0, 1, math.log(100)])


def test_cost_of_a_hand_made_partition_matches_a_hand_computation():
    g, eps = hand_graph()
    # nodes: a0 a1 b0 b1 c0 c1
    membership = np.array([0, 0, 0, 1, 0, 1])
    # cut edges: a1-b1 (ŵ 1), b0-c1 (ŵ 0.5), b1-c0 (ŵ 0: below the cut-off) -> 1.5 nats
    score = ia.partition_cost(g, membership, eps)
    assert score == pytest.approx(1.5)              # a float ...
    assert score.cost == pytest.approx(1.5)         # ... with the details attached
    assert score.cost_units == pytest.approx(1.5 / math.log(100))
    assert score.n_cut_edges == 2
    # nodes outside the partition (−1) do not count: a1 out removes the a1-b1 edge
    assert ia.partition_cost(g, [0, -1, 0, 1, 0, 1], eps).cost == pytest.approx(0.5)


def test_partition_cost_rejects_bad_memberships():
    g, eps = hand_graph()
    with pytest.raises(ValueError, match="one entry per graph node"):
        ia.partition_cost(g, [0, 1], eps)
    with pytest.raises(ValueError, match="epsilon"):
        ia.partition_cost(g, np.zeros(6, dtype=int), 0.0)
    with pytest.raises(ValueError, match=">= −1"):
        ia.partition_cost(g, [0, 0, 0, -2, 0, 0], eps)


def test_find_modules_excludes_the_bias_direction_and_reports_quality():
    g, eps = hand_graph()
    part = ia.find_modules(g, eps, resolution=0.8)
    assert part.membership[0] == -1                       # the constant direction a0
    assert 0 not in part.inactive
    # CPM quality by hand: Σ_within ŵ − γ Σ n_c (n_c − 1)/2
    m = part.membership
    within = sum(w for s, d, w in zip(g.src, g.dst, ia.cutoff_strength(g.w, eps))
                 if m[s] == m[d] and m[s] >= 0)
    sizes = np.bincount(m[m >= 0])
    assert part.quality == pytest.approx(within - 0.8 * (sizes * (sizes - 1) / 2).sum())
    assert part.cost == pytest.approx(ia.partition_cost(g, m, eps).cost)
    with_bias = ia.find_modules(g, eps, resolution=0.8, include_bias=True)
    assert with_bias.membership[0] >= 0


def test_inactive_nodes_are_reported_apart_and_do_not_count_as_modules():
    lam = [np.ones(3), np.ones(3)]
    w = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.001]])   # third pair below √ε
    g = ia.InteractionGraph.from_arrays(["x", "y"], lam, [w])
    part = ia.find_modules(g, 1e-4, n_modules=2)
    assert part.n_modules == 2
    assert sorted(part.inactive) == [2, 5]
    assert (part.membership[[2, 5]] == -1).all()


def random_graph(seed=0, sizes=(30, 30, 30)):
    rng = np.random.default_rng(seed)
    mats = [rng.lognormal(-2, 2, size=(b, a)) * (rng.random((b, a)) < 0.3) for a, b in zip(sizes, sizes[1:])]
    return ia.InteractionGraph.from_arrays([f"l{i}" for i in range(len(sizes))],
                                           [np.ones(s) for s in sizes], mats)


def test_objective_aliases():
    g = random_graph()
    a = ia.find_modules(g, 1e-4, objective="rb_configuration", resolution=0.5)
    b = ia.find_modules(g, 1e-4, objective="modularity", resolution=0.5)
    assert a.objective == "modularity"
    np.testing.assert_array_equal(a.membership, b.membership)
    with pytest.raises(ValueError, match="objective"):
        ia.find_modules(g, 1e-4, objective="surprise")


@pytest.mark.parametrize("objective", ["cpm", "modularity"])
def test_same_seed_same_answer(objective):
    g = random_graph()
    a = ia.find_modules(g, 1e-4, objective=objective, resolution=0.5, seed=7)
    b = ia.find_modules(g, 1e-4, objective=objective, resolution=0.5, seed=7)
    np.testing.assert_array_equal(a.membership, b.membership)
    assert a.quality == b.quality


@pytest.mark.parametrize("objective", ["cpm", "modularity"])
@pytest.mark.parametrize("k", [2, 5, 9])
def test_n_modules_hits_k(objective, k):
    g = random_graph(1)
    part = ia.find_modules(g, 1e-4, objective=objective, n_modules=k)
    assert part.n_modules == k
    assert len(np.unique(part.membership[part.membership >= 0])) == k


def test_restarts_keep_the_best_quality():
    g = random_graph(2)
    single = [ia.find_modules(g, 1e-4, resolution=0.3, seed=s).quality for s in range(5)]
    best = ia.find_modules(g, 1e-4, resolution=0.3, seed=0, n_restarts=5)
    assert best.quality == pytest.approx(max(single))


def test_fixed_nodes_stay_in_their_modules():
    g = random_graph(3)
    free = ia.find_modules(g, 1e-4, resolution=0.3)
    a, b = [int(i) for i in np.flatnonzero(free.membership >= 0)[:2]]
    part = ia.find_modules(g, 1e-4, resolution=0.3, fixed={a: 0, b: 1})
    assert part.membership[a] != part.membership[b]


def test_compare_partitions():
    assert ia.compare_partitions([0, 0, 1, 1], [5, 5, 2, 2]) == {"ari": 1.0, "nmi": 1.0}
    assert ia.compare_partitions([0, 0, 1, 1], [0, 1, 0, 1]).ari == pytest.approx(-0.5)
    r = ia.compare_partitions([0, 0, 1, 1, -1], [0, 1, 0, 1, 3])
    assert r["ari"] < 0 and r["nmi"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        ia.compare_partitions([0, 1], [0, 1, 1])


def test_partition_round_trips_through_a_dict():
    g = random_graph()
    part = ia.find_modules(g, 1e-4, resolution=0.5)
    back = ia.Partition.from_dict(part.to_dict())
    np.testing.assert_array_equal(back.membership, part.membership)
    assert back.cost == part.cost and back.modules == part.modules
