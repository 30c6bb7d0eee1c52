"""core/gram.py: the block-row XᵀX, the streamed moments and Jacobian-Gram sums, against direct
numpy formulas (float64, relative 1e-12), on widths either side of the block size."""

import numpy as np
import pytest
import torch
from intermod.analysis.core.gram import GRAM_TILE, GramSum, MomentAccumulator, gram

WIDTHS = [1, 7, GRAM_TILE, GRAM_TILE + 1, 2 * GRAM_TILE + 3, 4 * GRAM_TILE + 5, 7 * GRAM_TILE - 1]


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("n", [0, 3, 300])
def test_gram_is_xtx(n, d):
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d + n))
    G = gram(X).numpy()
    ref = X.numpy().T @ X.numpy()
    assert G.shape == (d, d)
    scale = max(np.abs(ref).max(), 1.0)
    assert np.abs(G - ref).max() <= 1e-12 * scale
    assert np.abs(G - G.T).max() <= 1e-12 * scale


def test_gram_keeps_the_dtype_and_reads_strided_input():
    X = torch.randn(40, 2 * GRAM_TILE + 9, generator=torch.Generator().manual_seed(1))
    view = X[::2, 3:]                     # non-contiguous rows and columns
    G = gram(view)
    assert G.dtype == torch.float32
    ref = view.double().numpy().T @ view.double().numpy()
    assert np.abs(G.double().numpy() - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("d", [5, 2 * GRAM_TILE + 3])
def test_moments_match_numpy_with_a_large_mean_and_a_mask(d):
    gen = torch.Generator().manual_seed(d)
    batches = [torch.randn(2, 17, d, dtype=torch.float64, generator=gen) * 0.1 + 1e4 for _ in range(3)]
    masks = [(torch.rand(2, 17, generator=gen) > 0.3).double() for _ in range(3)]
    acc = MomentAccumulator()
    for x, w in zip(batches, masks):
        acc.add(x, w)
    n, mu, cov = acc.result(torch.device("cpu"))
    rows = torch.cat([x.reshape(-1, d)[w.reshape(-1) > 0] for x, w in zip(batches, masks)]).numpy()
    assert n == len(rows)
    np.testing.assert_allclose(mu.numpy(), rows.mean(0), rtol=1e-12)
    ref = np.cov(rows, rowvar=False, bias=True)
    assert np.abs(cov.numpy() - ref).max() <= 1e-9 * np.abs(ref).max()   # cancellation-free at mean 1e4


@pytest.mark.parametrize("d", [4, 2 * GRAM_TILE + 3])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("with_slot", [True, False])
def test_gram_sum_is_the_weighted_sum_of_outer_products(d, masked, with_slot):
    """Σ w ĝ ĝᵀ by explicit outer products, ĝ = g or (g, slot); twice, so that it accumulates."""
    gen = torch.Generator().manual_seed(d)
    g = torch.randn(3, 6, d, dtype=torch.float64, generator=gen)     # (K, B, d)
    slot = torch.randn(3, 6, dtype=torch.float64, generator=gen) if with_slot else None
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0] if masked else [1.0] * 6, dtype=torch.float64)
    total = GramSum(d + int(with_slot), torch.device("cpu"))
    for _ in range(2):
        total.add(g, w[None, :], slot)
    full = g.numpy() if slot is None else np.concatenate([g.numpy(), slot.numpy()[..., None]], -1)
    ref = 2 * sum(float(w[b]) * np.outer(full[k, b], full[k, b]) for k in range(3) for b in range(6))
    assert np.abs(total.total.numpy() - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("masked", [True, False])
def test_moments_keep_their_samples_while_fewer_than_half_the_width(masked):
    """rows(): the weight-1 samples, f − μ (centred) or f, exactly those added; dropped for good
    once there are more than ROWS_KEPT·d of them, so that memory stays flat in n."""
    from intermod.analysis.core import gram as gram_module

    d = 40
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(3, d, dtype=torch.float64, generator=gen) + 1e3 for _ in range(3)]
    masks = [torch.tensor([1.0, 0.0, 1.0] if masked else [1.0] * 3, dtype=torch.float64) for _ in batches]
    acc = MomentAccumulator()
    for x, w in zip(batches, masks):
        acc.add(x, w)
    kept = torch.cat([x[w > 0] for x, w in zip(batches, masks)])
    torch.testing.assert_close(acc.rows(centred=False), kept, rtol=1e-14, atol=1e-12)
    _, mu, cov = acc.result(torch.device("cpu"))
    centred = acc.rows(centred=True)
    torch.testing.assert_close(centred, kept - kept.mean(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(centred.T @ centred / len(kept), cov, rtol=1e-9, atol=1e-12)
    assert gram_module.ROWS_KEPT * d < 30
    for _ in range(9):                     # 27 more samples: past ROWS_KEPT·d
        acc.add(batches[0], torch.ones(3, dtype=torch.float64))
    assert acc.rows(centred=True) is None and acc._rows is None


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("include_bias", [True, False])
def test_augmented_rows_square_to_the_decomposed_block_of_g(center, include_bias):
    """RᵀR = data_block(G) for R = augmented_rows(samples) in every centring / slot case."""
    from intermod.analysis.core.gram import augmented_gram, augmented_rows
    from intermod.analysis.core.rotation import data_block

    X = torch.randn(7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 2.0
    acc = MomentAccumulator()
    acc.add(X, torch.ones(7, dtype=torch.float64))
    n, mu, cov = acc.result(torch.device("cpu"))
    R = augmented_rows(acc.rows(center), n, center=center, include_bias=include_bias)
    block = data_block(augmented_gram(mu, cov, center=center, include_bias=include_bias), center, include_bias)
    torch.testing.assert_close(R.T @ R, block, rtol=1e-12, atol=1e-12)
