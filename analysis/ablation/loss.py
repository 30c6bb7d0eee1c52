"""Behavioural losses L(y′, y) of an ablated output y′ against the clean one y (DESIGN.md §1).

A sample is an (input, position) pair, as everywhere in intermod (padded positions, from an
``attention_mask``, carry weight 0); outputs y: (B, …, d) are viewed as (B, P, d).

- ``"mse"``: per sample ‖y′ − y‖² / d, so L = (1/n) Σ ‖y′ − y‖² / (number of output coordinates).
- ``"kl"``: per sample KL(softmax y ‖ softmax y′) (logits in, nats out).
- ``"disagreement"``: per sample 1[argmax y′ ≠ argmax y] (classifiers: L = 1 − the ablated
  network's accuracy against the clean network's predictions).
- a callable ``(y_ablated, y_clean, batch) -> per-sample loss`` ((B,) or (B, P)).

Default tolerance. δ = ``TOLERANCE_SHARE`` (1 %) of the *scale* of the output, the loss of the
best constant output: for MSE that is the output's variance averaged over coordinates,
(1/d) Σ_k Var(y_k) (replace y by its mean); for KL it is E_x KL(p(x) ‖ p̄), p̄ = E_x p(x) (replace
every prediction by the average prediction: the information the output carries about the
input); for disagreement it is 1 − the largest class share of the clean predictions (always
predict the most common class). The same rule for every model and data set; a callable loss
has no scale, so it needs an explicit tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Any], Tensor]
LOSSES = ("mse", "kl", "disagreement")
GROUPS = ("coordinate", "class", "position")
TOLERANCE_SHARE = 0.01


@dataclass(frozen=True)
class Loss:
    """A resolved loss: ``name`` ("mse", "kl" or "callable") and the callable, if any."""

    name: str
    fn: LossFn | None = None

    @classmethod
    def resolve(cls, loss: str | LossFn | Loss) -> Loss:
        if isinstance(loss, Loss):
            return loss
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
            return cls(loss)
        if callable(loss):
            return cls("callable", loss)
        raise TypeError(f"loss must be 'mse', 'kl' or a callable (y_ablated, y_clean, batch) -> "
                        f"per-sample loss, got {type(loss).__name__}")

    def per_sample(self, ya: Tensor, y: Tensor, batch: Any) -> Tensor:
        """ya: (R, B, P, d) ablated outputs, y: (B, P, d) clean -> (R, B, P) losses.
        ``batch`` is passed to a callable loss (which sees the outputs in their own shape
        through ``shape``, see :meth:`Ablator <.forward.Ablator>`)."""
        if self.name == "mse":
            return (ya - y).square().mean(-1)
        if self.name == "kl":
            logp = torch.log_softmax(y, -1)
            return (logp.exp() * (logp - torch.log_softmax(ya, -1))).sum(-1)
        if self.name == "disagreement":
            return (ya.argmax(-1) != y.argmax(-1)).to(y.dtype)
        raise AssertionError("callable losses are evaluated by the Ablator")

    def check_group(self, group: str, has_positions: bool) -> None:
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        if group == "coordinate" and self.name != "mse":
            raise ValueError("group='coordinate' needs loss='mse' (a loss per output coordinate); "
                             "use group='class' or 'position'")
        if group == "position" and not has_positions:
            raise ValueError("group='position' needs outputs with a position axis (B, P, d)")

    def default_group(self, has_positions: bool) -> str:
        """Positions for sequence outputs; else coordinates (MSE) or classes (KL, callables)."""
        if has_positions:
            return "position"
        return "coordinate" if self.name == "mse" else "class"


class ScaleAccumulator:
    """Streams the clean outputs y (B, P, d) with weights w (B, P) into the loss of the best
    constant output (see the module docstring); ``result()`` is None for a callable loss."""

    def __init__(self, loss: Loss):
        self.loss = loss
        self.n = 0.0
        self.s1: Tensor | float = 0.0    # Σ w y (MSE) or Σ w p (KL)
        self.s2: Tensor | float = 0.0    # Σ w y² (MSE) or Σ w Σ_k p log p (KL)
        # disagreement: s1 = Σ w one_hot(argmax y)

    def add(self, y: Tensor, w: Tensor) -> None:
        y, w = y.to(torch.float64), w.to(torch.float64)
        self.n += float(w.sum())
        if self.loss.name == "mse":
            self.s1 = self.s1 + torch.einsum("bp,bpd->d", w, y)
            self.s2 = self.s2 + torch.einsum("bp,bpd->d", w, y.square())
        elif self.loss.name == "disagreement":
            one_hot = torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(w.dtype)
            self.s1 = self.s1 + torch.einsum("bp,bpd->d", w, one_hot)
        elif self.loss.name == "kl":
            logp = torch.log_softmax(y, -1)
            p = logp.exp()
            self.s1 = self.s1 + torch.einsum("bp,bpd->d", w, p)
            self.s2 = self.s2 + float((w * (p * logp).sum(-1)).sum())

    def result(self) -> float | None:
        if self.loss.name == "callable" or self.n == 0:
            return None
        if self.loss.name == "mse":
            mean = self.s1 / self.n
            return float((self.s2 / self.n - mean.square()).clamp_min(0).mean())
        if self.loss.name == "disagreement":
            return float(1.0 - self.s1.max() / self.n)
        pbar = self.s1 / self.n
        ent = torch.where(pbar > 0, pbar * pbar.log(), torch.zeros_like(pbar)).sum()
        return max(0.0, float(self.s2 / self.n - ent))


def resolve_tolerance(tolerance: float | None, scale: float | None) -> float:
    """δ: the user's value, else ``TOLERANCE_SHARE`` × the output's scale."""
    if tolerance is not None:
        if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and tolerance == tolerance
                and tolerance != float("inf")):
            raise ValueError(f"tolerance must be a finite number >= 0 (or None), got {tolerance!r}")
        return float(tolerance)
    if scale is None:
        raise ValueError("a callable loss has no default tolerance: pass tolerance=")
    return TOLERANCE_SHARE * scale
