"""Decompositions side by side (analysis/core/lapack.py): results, threads, and the rotations
of several layers at once against one at a time."""

import threading

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import lapack
from intermod.analysis.core.lapack import SERIAL_LAPACK_MAX, Call, run_one, run_steps
from intermod.analysis.core.rotation import gram_factor, rotate_all
from torch import nn


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _square(A: torch.Tensor) -> torch.Tensor:
    return A @ A


def _chain(A: torch.Tensor, rounds: int):
    """Steps: square A ``rounds`` times, one call per round, then return the trace."""
    for _ in range(rounds):
        (A,) = yield (Call(_square, A),)
    return float(A.trace())


def test_run_steps_returns_what_running_each_alone_returns():
    """Generators of different lengths (none, one, three rounds; two calls in one round) give
    the values their calls would give one at a time."""
    A = torch.tensor([[0.5, 0.1], [0.2, 0.3]], dtype=torch.float64)

    def pair():
        x, y = yield (Call(_square, A), Call(_square, 2 * A))
        return float((x + y).sum())

    got = run_steps([_chain(A, 0), _chain(A, 1), _chain(A, 3), pair()])
    want = [float(A.trace()), float((A @ A).trace()), float(torch.linalg.matrix_power(A, 8).trace()),
            float((A @ A + 4 * A @ A).sum())]
    np.testing.assert_allclose(got, want, rtol=1e-14)
    assert run_one(_chain(A, 2)) == pytest.approx(float(torch.linalg.matrix_power(A, 4).trace()), rel=1e-14)


def _meet(barrier: threading.Barrier, seen: list):
    def call(A: torch.Tensor) -> torch.Tensor:
        seen.append((threading.get_ident(), torch.get_num_threads()))
        barrier.wait()          # raises BrokenBarrierError unless the other call runs meanwhile
        return A
    return call


def test_calls_of_one_round_run_side_by_side_on_one_thread_each(two_threads):
    barrier, seen = threading.Barrier(2, timeout=20), []
    A = torch.zeros(3, 3)
    run_steps([iter_calls((Call(_meet(barrier, seen), A),)), iter_calls((Call(_meet(barrier, seen), A),))])
    assert len({ident for ident, _ in seen}) == 2 and threading.get_ident() not in {i for i, _ in seen}
    assert all(n == 1 for _, n in seen)
    assert torch.get_num_threads() == 2          # restored


def iter_calls(calls: tuple[Call, ...]):
    results = yield calls
    return results


def test_the_thread_count_is_restored_when_a_call_fails(two_threads):
    def fail(A):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        run_steps([iter_calls((Call(fail, torch.zeros(2, 2)), Call(_square, torch.eye(2))))])
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("case", ["one thread", "large matrix"])
def test_calls_run_in_this_thread_when_side_by_side_does_not_apply(case, two_threads, monkeypatch):
    """With one torch thread, or a matrix above SERIAL_LAPACK_MAX (whose decomposition keeps
    every thread), the calls run one after another in the calling thread."""
    if case == "one thread":
        torch.set_num_threads(1)
    shape = (3, 3) if case == "one thread" else (SERIAL_LAPACK_MAX + 1, 1)
    seen = []
    calls = tuple(Call(lambda A: seen.append(threading.get_ident()) or A, torch.zeros(shape)) for _ in range(3))
    run_one(iter_calls(calls))
    assert seen == [threading.get_ident()] * 3


def test_serial_lapack_runs_small_cpu_decompositions_on_one_thread(two_threads):
    inside = lapack.serial_lapack(lambda A: torch.get_num_threads())
    assert inside(torch.eye(4)) == 1 and torch.get_num_threads() == 2
    assert inside(torch.zeros(SERIAL_LAPACK_MAX + 1, 1)) == 2


def test_rotating_layers_together_equals_rotating_each_alone(two_threads):
    """The output-target basis rotates its layers side by side; rotating each one alone with
    the same Grams gives the same C, C⁻¹ and Λ (also through the eigh whitening, forced by a
    constant input feature that makes G singular)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 5)).double()
    X = torch.randn(600, 30, dtype=torch.float64)
    X[:, 0] = 1.0
    basis = ia.compute_basis(model, X, ["0", "2", "4", "output"], progress=False)
    opts = dict(center=True, include_bias=True, tol_G=1e-10, tol_M=1e-10)
    jobs = []
    for n in basis.layers:
        lb = basis[n]
        jobs.append((torch.as_tensor(lb.G), gram_factor(torch.as_tensor(lb.M)), torch.as_tensor(lb.mean), None))
    together = rotate_all(jobs, **opts)
    for job, rot in zip(jobs, together):
        (alone,) = rotate_all([job], **opts)
        assert rot.bias_direction == alone.bias_direction
        for a, b in ((rot.C, alone.C), (rot.Cinv, alone.Cinv), (rot.Lambda, alone.Lambda)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))
    assert basis["0"].k == 30   # 29 varying inputs and the constant: input 0 is no direction of its own


@pytest.mark.parametrize("n", [1, 5, 256, 257, 600, 785])
def test_triangular_products_by_blocks_equal_the_dense_products(n):
    """lower_times / times_lower = tril(L) X and X tril(L) on either side of the block size
    and at odd sizes (1e-12); the upper triangle, filled with garbage here, is never read."""
    from intermod.analysis.core.rotation import lower_times, times_lower

    g = torch.Generator().manual_seed(n)
    L = torch.randn(n, n, generator=g, dtype=torch.float64)
    X, Y = torch.randn(n, 7, generator=g, dtype=torch.float64), torch.randn(9, n, generator=g, dtype=torch.float64)
    low = L.tril()
    scale = float(L.abs().max()) * n ** 0.5
    torch.testing.assert_close(lower_times(L, X), low @ X, rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(times_lower(Y, L), Y @ low, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_the_basis_puts_independent_decompositions_in_one_round(target, monkeypatch):
    """output: every layer's G and M are known after one pass, so one round holds the SVDs of
    several layers. next_layer: layer l's M needs C_{l+1}, but its whitening needs only G, so
    a round holds layer l+1's SVD beside layer l's two Choleskys."""
    rounds = []
    real = lapack._run_round
    monkeypatch.setattr(lapack, "_run_round", lambda calls: rounds.append([c.fn.__name__ for c in calls]) or real(calls))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4)).double()
    ia.compute_basis(model, torch.randn(300, 12, dtype=torch.float64), ["0", "2", "4", "output"],
                     jacobian_target=target, progress=False)
    if target == "output":
        assert max(r.count("_thin_svd") for r in rounds) >= 3
    else:
        assert any("_thin_svd" in r and r.count("_cholesky") == 2 for r in rounds)
        assert all(r.count("_thin_svd") <= 1 for r in rounds)


@pytest.mark.parametrize("target", ["output", "next_layer"])
@pytest.mark.parametrize("kind", ["interaction", "pca"])
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("include_bias", [True, False])
def test_fewer_samples_than_dimensions_decompose_g_from_the_samples(target, kind, center, include_bias, monkeypatch):
    """n = 50 samples of 120-wide layers: G has rank ≤ 50, and its eigendecomposition comes from
    the SVD of the samples (no eigh of the 120 × 120 block, no Cholesky attempt). The basis equals
    the one from eigh of G (ROWS_KEPT = 0: samples never kept) within 1e-10: same k, C, C⁻¹, Λ."""
    from intermod.analysis.core import gram as gram_module
    from intermod.analysis.core import rotation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 120), nn.ReLU(), nn.Linear(120, 120), nn.ReLU(), nn.Linear(120, 5)).double()
    X = torch.randn(50, 30, dtype=torch.float64)
    sizes: list[int] = []
    eigh = rotation.eigh_desc
    cholesky = rotation._cholesky
    monkeypatch.setattr(rotation, "eigh_desc", lambda A: sizes.append(A.shape[0]) or eigh(A))
    monkeypatch.setattr(rotation, "_cholesky", lambda A: sizes.append(A.shape[0]) or cholesky(A))
    opts = dict(jacobian_target=target, kind=kind, center=center, include_bias=include_bias, progress=False,
                batch_size=16)
    from_samples = ia.compute_basis(model, X, ["0", "2", "4", "output"], **opts)
    assert all(size < 120 for size in sizes)
    monkeypatch.setattr(gram_module, "ROWS_KEPT", 0.0)
    sizes.clear()
    from_G = ia.compute_basis(model, X, ["0", "2", "4", "output"], **opts)
    assert 120 in sizes or 121 in sizes   # the check above can fail
    for n in from_G.layers:
        a, b = from_samples[n], from_G[n]
        assert a.k == b.k and a.bias_direction == b.bias_direction
        for x, y in ((a.C, b.C), (a.Cinv, b.Cinv), (a.Lambda, b.Lambda)):
            assert np.abs(x - y).max() <= 1e-10 * np.abs(y).max()
    assert from_samples["2"].k <= 51
