"""Fourier labels of functions on Z_p × Z_p, and how a partition lines up with them.

The ground truth of the modular-addition example (:mod:`.modadd`): a direction of a network
computing (a + b) mod p is, as a function of (a, b), concentrated on one frequency w (cos and
sin of 2πw·a/p, of b, of a ± b, and products of those). :func:`fourier_labels` names each
direction's dominant frequency; :func:`frequency_alignment` scores modules against the names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.partition import compare_partitions

__all__ = ["FourierLabels", "fourier_labels", "frequency_alignment"]


@dataclass(frozen=True)
class FourierLabels:
    """Dominant frequency of each of k functions of (a, b) ∈ Z_p².

    ``frequency`` (k,) int: the frequency w ∈ {1 … (p−1)/2} holding most of the function's
    non-constant power, 0 for a constant function; ``fraction`` (k,): that share;
    ``power`` (k, (p−1)/2 + 1): share per frequency, column 0 = cross-frequency terms.
    """

    frequency: np.ndarray
    fraction: np.ndarray
    power: np.ndarray


def fourier_labels(values: np.ndarray, p: int, rtol: float = 1e-9) -> FourierLabels:
    """Label functions of (a, b) by their dominant Fourier frequency.

    ``values``: (p², k), row a·p + b holding the functions at (a, b) (the order of
    :func:`all_inputs`). With F = the 2-D DFT over (a, b) and ``|·|`` the frequency folded
    to {0 … (p−1)/2}, the component (k₁, k₂) ≠ (0, 0) belongs to frequency w when its
    non-zero indices all fold to w: cos/sin(2πw a/p), of b, of a ± b and their products;
    other components (products of two different frequencies) are "cross". A function whose
    non-constant power is below ``rtol`` times the largest total power (constant included)
    of the k functions gets frequency 0.
    """
    grid = np.asarray(values, dtype=np.float64).reshape(p, p, -1)
    spec = np.abs(np.fft.fft2(grid, axes=(0, 1))) ** 2
    scale = spec.sum((0, 1)).max()
    spec[0, 0] = 0.0
    fold = np.minimum(np.arange(p), p - np.arange(p))
    fa, fb = fold[:, None], fold[None, :]
    bucket = np.where(fa == 0, fb, np.where(fb == 0, fa, np.where(fa == fb, fa, 0)))
    n_freq = (p - 1) // 2
    power = np.stack([spec[bucket == w].sum(0) for w in range(n_freq + 1)], axis=1)
    total = power.sum(1)
    alive = total > rtol * max(scale, np.finfo(float).tiny)
    share = power / np.where(alive, total, 1.0)[:, None]
    best = 1 + np.argmax(share[:, 1:], axis=1)
    frequency = np.where(alive, best, 0)
    fraction = np.where(alive, share[np.arange(len(best)), best], 0.0)
    return FourierLabels(frequency=frequency, fraction=fraction, power=share)



def frequency_alignment(
    membership: np.ndarray,
    frequency: np.ndarray,
    power: np.ndarray,
    Lambda: np.ndarray,
    key: Sequence[int],
) -> dict:
    """How modules line up with Fourier frequencies.

    Over the nodes inside the partition (``membership ≥ 0``) with a frequency label ≥ 1:

    - ``ari``, ``nmi``: agreement of modules with the dominant-frequency labels;
    - ``purity``: Σ_modules (largest count of one frequency) / number of nodes;
    - per module: ``size``, ``frequencies`` (count per dominant frequency) and ``shares``,
      the module's Λ-weighted Fourier power per key frequency,
      Σ_{i∈m} Λ_i·power_{i,w} / Σ_{i∈m} Λ_i, plus ``"other"`` for the rest;
    - ``modules_per_key``: for each key frequency w, the modules holding its nodes.
    """
    keep = (membership >= 0) & (frequency >= 1)
    mods = sorted(set(membership[keep].tolist()))
    out_modules = []
    n_major = 0
    for mod in mods:
        sel = keep & (membership == mod)
        values, counts = np.unique(frequency[sel], return_counts=True)
        n_major += int(counts.max())
        weights = Lambda[sel] / Lambda[sel].sum()
        shares = {int(w): float(weights @ power[sel, w]) for w in key}
        shares["other"] = float(1.0 - sum(shares.values()))
        out_modules.append(
            {
                "module": int(mod),
                "size": int(sel.sum()),
                "frequencies": {int(v): int(c) for v, c in zip(values, counts)},
                "shares": shares,
            }
        )
    scores = (
        compare_partitions(np.where(keep, membership, -1), np.where(keep, frequency, -1))
        if len(mods) > 1
        else {"ari": float("nan"), "nmi": float("nan")}
    )
    return {
        **scores,
        "purity": n_major / max(int(keep.sum()), 1),
        "n_nodes": int(keep.sum()),
        "modules": out_modules,
        "modules_per_key": {
            int(w): sorted(set(membership[keep & (frequency == w)].tolist())) for w in key
        },
    }
