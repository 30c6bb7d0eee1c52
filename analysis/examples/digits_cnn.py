"""``digits_cnn``: a small CNN trained on scikit-learn's bundled 8×8 digits (no download).

Network (an ``nn.Sequential``; module names in brackets)::

    (B, 1, 8, 8) → [conv1] Conv2d 1→8, 3×3, pad 1 → [relu1] → [pool1] MaxPool 2
                 → [conv2] Conv2d 8→16, 3×3, pad 1 → [relu2] → [pool2] MaxPool 2
                 → [flatten] (B, 64) → [fc1] Linear 64→32 → [relu3] → [fc2] Linear 32→10

Node layers (module inputs): ``relu1`` (conv1's output: 8 channels at 8·8 positions),
``conv2`` (after pooling: 8 channels at 4·4 positions), ``relu2`` (conv2's output: 16 channels
at 4·4 positions), ``fc1`` (after the flatten: 64 features), ``fc2`` (32 features) and the
logits. Conv maps are read in the ``"channels"`` layout (every image position is a sample of
C features), so the number of positions changes at the pooling and the flatten: see
docs/models.md for how the bias slot crosses them. Same data split, training recipe and
determinism as the ``digits`` MLP (:mod:`~intermod.analysis.examples.digits`), for comparison.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .base import Example
from .cache import DATA_DIR, save_weights
from .digits import load_data
from .training import deterministic, fit, trained_model

__all__ = ["CONFIG", "LAYERS", "TARGET_ACCURACY", "build", "cnn", "train"]

CONFIG: dict[str, Any] = {
    "version": 1, "channels": [8, 16], "hidden": 32, "steps": 400, "lr": 1e-2,
    "weight_decay": 0.05, "test_fraction": 0.2, "seed": 0,
}
#: Node layers: a conv output, after pooling, a conv output, after the flatten, hidden, logits.
LAYERS = ["relu1", "conv2", "relu2", "fc1", "fc2", "output"]
#: Training target: accuracy on the held-out split.
TARGET_ACCURACY = 0.95


def cnn(config: dict[str, Any], dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The untrained network of ``config`` (channels c1, c2; hidden width)."""
    c1, c2 = config["channels"]
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, c1, 3, padding=1, dtype=dtype), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(c1, c2, 3, padding=1, dtype=dtype), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(4 * c2, config["hidden"], dtype=dtype), relu3=nn.ReLU(),
        fc2=nn.Linear(config["hidden"], 10, dtype=dtype)))


def images(x: torch.Tensor) -> torch.Tensor:
    """Flat 64-pixel rows -> (n, 1, 8, 8) images."""
    return x.reshape(-1, 1, 8, 8)


def train(config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train on the training split of :func:`~.digits.load_data`; returns (state, info)."""
    x, y, x_test, y_test = load_data(config)
    x, x_test = images(x), images(x_test)
    with deterministic(config["seed"]):
        model = cnn(config)
        loss = fit(model, lambda: nn.functional.cross_entropy(model(x), y), config)
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).double().mean())
    info = {"test_accuracy": acc, "train_loss": float(loss)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info


def build(retrain: bool = False, **overrides: Any) -> Example:
    """The trained ``digits_cnn`` example, analysed on the held-out images (n ≈ 359)."""
    model, config, info, source = trained_model("digits_cnn", CONFIG, overrides, train, cnn, retrain)
    _, _, x_test, y_test = load_data(config)
    c1, c2 = config["channels"]
    description = (
        f"CNN conv(1→{c1})-ReLU-maxpool-conv({c1}→{c2})-ReLU-maxpool-flatten-"
        f"{4 * c2}→{config['hidden']}→10 trained (AdamW) on scikit-learn's 8×8 digits; analysed on "
        f"the {len(y_test)} held-out images (test accuracy {info['test_accuracy']:.3f}), conv "
        "maps read as channels at image positions. No ground truth.")
    extra = {"config": config, "weights": source, "labels": y_test, **info}
    return Example("digits_cnn", model, images(x_test), list(LAYERS), description, None, extra)


if __name__ == "__main__":   # retrain the default configuration and rewrite the shipped weights
    weights, training = train(CONFIG)
    save_weights(DATA_DIR / "digits_cnn.safetensors", weights, CONFIG, training)
