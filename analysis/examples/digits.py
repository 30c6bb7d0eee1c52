"""``digits``: an MLP trained on scikit-learn's bundled 8×8 handwritten digits (no download).

Network 64 → 32 → 32 → 10 (ReLU), inputs are pixel intensities / 16 ∈ [0, 1], outputs are
logits. Training: full-batch AdamW with weight decay and cosine learning-rate decay on a
seeded 80 % split of the 1797 images, float64, deterministic (see
:func:`~intermod.analysis.examples.training.deterministic`); test accuracy on the other 20 %
is recorded in ``extra["test_accuracy"]``. The analysis inputs are the held-out images.
No ground truth is known: this is the real-data case, where only truth-free measures
(sparsity, stability, cost) can be reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Example
from .cache import DATA_DIR, save_weights
from .training import deterministic, fit, mlp, node_layers, trained_mlp

__all__ = ["CONFIG", "TARGET_ACCURACY", "build", "load_data", "train"]

CONFIG: dict[str, Any] = {
    "version": 1, "widths": [64, 32, 32, 10], "steps": 600, "lr": 1e-2, "weight_decay": 0.1,
    "test_fraction": 0.2, "seed": 0,
}
#: Training target: accuracy on the held-out split.
TARGET_ACCURACY = 0.93


def load_data(config: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): float64 pixels / 16 and int64 labels, seeded split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.from_numpy(np.random.default_rng(config["seed"]).permutation(len(y)))
    n_test = round(config["test_fraction"] * len(y))
    test, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[test], y[test]


def train(config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train on the training split; returns (state dict, info with test accuracy)."""
    x, y, x_test, y_test = load_data(config)
    with deterministic(config["seed"]):
        model = mlp(config["widths"])
        loss = fit(model, lambda: torch.nn.functional.cross_entropy(model(x), y), config)
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).double().mean())
    info = {"test_accuracy": acc, "train_loss": float(loss)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info


def build(retrain: bool = False, **overrides: Any) -> Example:
    """The trained ``digits`` example, analysed on the held-out images (n ≈ 359)."""
    model, config, info, source = trained_mlp("digits", CONFIG, overrides, train, retrain)
    _, _, x_test, y_test = load_data(config)
    return Example(
        name="digits",
        model=model,
        inputs=x_test,
        layers=node_layers(model),
        description=(
            "ReLU MLP 64→32→32→10 trained (AdamW, weight decay "
            f"{config['weight_decay']:g}) on scikit-learn's 8×8 digits; analysed on the "
            f"{len(y_test)} held-out images (test accuracy {info['test_accuracy']:.3f}). "
            "No ground truth."
        ),
        truth=None,
        extra={"config": config, "weights": source, "labels": y_test, **info},
    )


def ship() -> None:
    """Train the default configuration and write the shipped weights file."""
    state, info = train(CONFIG)
    save_weights(DATA_DIR / "digits.safetensors", state, CONFIG, info)


if __name__ == "__main__":
    ship()
