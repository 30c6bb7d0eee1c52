"""``two_tasks``: one dense ReLU MLP trained on two independent regression tasks.

Task A maps x_A ∈ [-1, 1]³ (input coordinates 0–2) to two outputs (coordinates 0–1), task B
maps x_B ∈ [-1, 1]³ (inputs 3–5) to outputs 2–3:

    y_A = ( sin(2 x_A0) x_A1 + x_A2 ,  |x_A0| − x_A1 x_A2 ),
    y_B = ( x_B0 x_B1 + cos(2 x_B2) ,  relu(x_B0 + x_B2) − x_B1² ),

each output standardised to zero mean and unit variance on the training set. The network is
dense (6 → 32 → 32 → 4, every hidden neuron may see both tasks), so any modularity is learnt.
Training: full-batch AdamW (decoupled weight decay, the paper's §4 argument for why training
favours modularity), cosine learning-rate decay, on 4096 i.i.d. samples, float64, seeded and
single-threaded (:func:`~intermod.analysis.examples.training.deterministic`).

Analysis data are product data: a grid of ``n_grid`` task-A inputs × ``n_grid`` task-B inputs
(every x_A paired with every x_B, C order, x_A the slow index), so the two tasks are exactly
independent. Ground truth: a basis direction belongs to the task whose input moves its
variance when the other task's input is held fixed (:class:`~.truth.ProductTruth`).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Example
from .cache import DATA_DIR, save_weights
from .training import deterministic, fit, mlp, node_layers, trained_mlp
from .truth import ProductTruth

__all__ = ["CONFIG", "TARGET_R2", "build", "task_targets", "train"]

#: Training configuration (its hash keys the weight cache).
CONFIG: dict[str, Any] = {
    "version": 1, "widths": [6, 32, 32, 4], "n_train": 4096, "n_test": 2048, "steps": 2500,
    "lr": 1e-2, "weight_decay": 0.1, "seed": 0,
}
#: Training target: R² on the held-out test set, for every output coordinate.
TARGET_R2 = 0.95
D_TASK = 3


def task_targets(x: torch.Tensor) -> torch.Tensor:
    """Raw (unstandardised) targets, x (n, 6) -> y (n, 4): y[:, :2] from x[:, :3] only,
    y[:, 2:] from x[:, 3:] only."""
    a0, a1, a2, b0, b1, b2 = x.unbind(dim=1)
    return torch.stack([
        torch.sin(2 * a0) * a1 + a2,
        a0.abs() - a1 * a2,
        b0 * b1 + torch.cos(2 * b2),
        torch.relu(b0 + b2) - b1**2,
    ], dim=1)


def _sample(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, 2 * D_TASK, generator=gen, dtype=torch.float64) * 2 - 1


def train(config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the network of ``config``; returns (state dict, info with test R² per output).

    The output standardisation (mean, std of the raw training targets) is folded into the
    last layer, so the saved network predicts standardised targets directly.
    """
    with deterministic(config["seed"]):
        gen = torch.Generator().manual_seed(config["seed"])
        x, x_test = _sample(gen, config["n_train"]), _sample(gen, config["n_test"])
        y_raw = task_targets(x)
        mu, sd = y_raw.mean(0), y_raw.std(0)
        y, y_test = (y_raw - mu) / sd, (task_targets(x_test) - mu) / sd
        model = mlp(config["widths"])
        loss = fit(model, lambda: ((model(x) - y) ** 2).mean(), config)
        with torch.no_grad():
            resid = ((model(x_test) - y_test) ** 2).mean(0)
            r2 = (1 - resid / y_test.var(0)).tolist()
    info = {"test_r2": r2, "train_mse": float(loss)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info


def product_inputs(n_grid: int, seed: int = 1) -> torch.Tensor:
    """Product data: (n_grid², 6), row i·n_grid + j = (x_A[i], x_B[j])."""
    gen = torch.Generator().manual_seed(seed)
    xa = torch.rand(n_grid, D_TASK, generator=gen, dtype=torch.float64) * 2 - 1
    xb = torch.rand(n_grid, D_TASK, generator=gen, dtype=torch.float64) * 2 - 1
    return torch.cat([xa.repeat_interleave(n_grid, 0), xb.repeat(n_grid, 1)], dim=1)


def build(n_grid: int = 40, retrain: bool = False, **overrides: Any) -> Example:
    """The trained ``two_tasks`` example on an ``n_grid`` × ``n_grid`` product grid.

    ``overrides`` replace entries of :data:`CONFIG` (e.g. ``weight_decay=0``); weights for a
    non-default configuration are trained once and cached. ``retrain`` ignores the caches.
    """
    model, config, info, source = trained_mlp("two_tasks", CONFIG, overrides, train, retrain)
    inputs = product_inputs(n_grid)
    layers = node_layers(model)
    return Example(
        name="two_tasks",
        model=model,
        inputs=inputs,
        layers=layers,
        description=(
            "Dense ReLU MLP 6→32→32→4 trained (AdamW, weight decay "
            f"{config['weight_decay']:g}) on two independent regression tasks with disjoint "
            f"inputs (0–2, 3–5) and outputs (0–1, 2–3); analysed on a {n_grid}×{n_grid} "
            "product grid. Truth: the task whose input moves a direction's variance."
        ),
        truth=ProductTruth(model, inputs, layers, (n_grid, n_grid)),
        extra={"config": config, "weights": source, "grid_shape": (n_grid, n_grid),
                  "input_groups": [[0, 1, 2], [3, 4, 5]], "output_groups": [[0, 1], [2, 3]],
                  **info},
    )


def ship() -> None:
    """Train the default configuration and write the shipped weights file."""
    state, info = train(CONFIG)
    save_weights(DATA_DIR / "two_tasks.safetensors", state, CONFIG, info)


if __name__ == "__main__":
    ship()
