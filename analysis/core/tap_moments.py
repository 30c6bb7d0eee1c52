"""Per-class σ′ moments of conv sections, summed in the activation pass: the common part of
:class:`~intermod.analysis.core.conv_grams.ConvMoments` (one convolution) and
:class:`~intermod.analysis.core.pool_grams.PoolMoments` (a pool before it).

The moments are kept per class c of positions with the same column of tap masks m_δ (the
interior, each band along the edges, each corner) of maps of one size, and only batches of maps
of that size whose sample weights are all 1 can be summed this way; any other batch makes them
inexact, and the section's Gram then comes from the coloured VJPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


def same_maps(spatial: tuple[int, ...], point: Tensor, w_in: Tensor) -> bool:
    """Whether moments kept per position of maps of ``spatial`` positions can sum a batch of input
    maps ``point`` (B, d, *S) with sample weights ``w_in`` (B, P): the same positions, and every
    weight 1 (a masked batch takes the coloured VJPs)."""
    return tuple(point.shape[2:]) == tuple(spatial) and bool((w_in == 1).all())


def still_exact(moments: Any, point: Tensor, w_in: Tensor) -> bool:
    """Whether ``moments`` (any accumulator with ``spatial`` and ``exact``) can sum this batch
    (:func:`same_maps`, and every batch before it could); its ``exact`` turns False when not."""
    if moments.exact and not same_maps(moments.spatial, point, w_in):
        moments.exact = False
    return moments.exact


@dataclass
class TapMoments:
    """S (n_classes, …, h, h) and sigma (n_classes, h), float64, on input maps of ``spatial``
    positions, with the tap masks ``taps`` (n_classes, n_taps) of each class and the class of
    each position ``classes``; ``n`` maps summed; ``exact`` (module docstring)."""

    spatial: tuple[int, ...]
    taps: Tensor
    classes: Tensor
    S: Tensor
    sigma: Tensor
    n: float = 0.0
    exact: bool = True

    def accepts(self, point: Tensor, w_in: Tensor) -> bool:
        """Whether this batch can be summed (:func:`still_exact`)."""
        return still_exact(self, point, w_in)
