"""Deterministic training of the small example MLPs.

``deterministic()`` pins everything that can change a CPU training run between two calls in
the same environment: the global RNG (forked, so the caller's stream is untouched), one
intra-op thread (reduction order), and ``torch.use_deterministic_algorithms``. Bit-identical
weights are promised between runs on the same machine and torch build, not across CPUs
(vectorised kernels may round differently); the shipped weights make that moot for users.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["deterministic", "mlp", "node_layers"]


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch's global RNG, use one thread and deterministic kernels; restore afterwards."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)


def mlp(widths: Sequence[int], dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Dense ReLU MLP ``Linear(w0,w1), ReLU, …, Linear(w_{L-1}, w_L)`` (no final ReLU).

    The Linear layers sit at even indices "0", "2", …, so the node layers (inputs of the
    Linear layers, then the output) are ``["0", "2", …, "output"]``.
    """
    parts: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        parts.append(nn.Linear(a, b, dtype=dtype))
        if i < len(widths) - 2:
            parts.append(nn.ReLU())
    return nn.Sequential(*parts)


def node_layers(model: nn.Sequential) -> list[str]:
    """Inputs of every Linear layer of a Sequential, then ``"output"``."""
    return [name for name, m in model.named_children() if isinstance(m, nn.Linear)] + ["output"]


def fit(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """Full-batch AdamW (``lr``, ``weight_decay``) with a cosine learning-rate decay over
    ``steps`` steps; ``loss_fn()`` computes the loss of the current model. Returns the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    steps = config["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
    return loss.detach()


def trained_model(name: str, defaults: dict[str, Any], overrides: dict[str, Any], train: Callable,
                  make: Callable[[dict[str, Any]], nn.Module], retrain: bool = False
                  ) -> tuple[nn.Module, dict[str, Any], dict[str, Any], str]:
    """The example network ``name`` (built by ``make(config)``) with ``defaults`` updated by
    ``overrides``: shipped or cached weights, else trained once (:func:`~.cache.load_or_train`).
    Returns (model in eval mode, config, training info, where the weights came from)."""
    from .cache import load_or_train

    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {name} options: {sorted(unknown)}")
    config = {**defaults, **overrides}
    state, info, source = load_or_train(name, config, train, retrain=retrain)
    model = make(config)
    model.load_state_dict(state)
    return model.eval(), config, info, source


def trained_mlp(name: str, defaults: dict[str, Any], overrides: dict[str, Any],
                train: Callable, retrain: bool = False) -> tuple[nn.Module, dict[str, Any], dict[str, Any], str]:
    """:func:`trained_model` for an :func:`mlp` of ``config["widths"]``."""
    return trained_model(name, defaults, overrides, train, lambda c: mlp(c["widths"]), retrain)
