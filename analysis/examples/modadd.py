"""A one-layer transformer trained on modular addition, with Fourier ground truth.

The task (Nanda et al. 2023; the headline model of the Local Interaction Basis paper):
tokens ``[a, b, =]`` with a, b ∈ {0 … p−1} and ``=`` the token p; the target is
(a + b) mod p. A trained network computes it with a few *key frequencies* w: it embeds
a ↦ (cos(2πwa/p), sin(2πwa/p)), multiplies the two embeddings in the MLP into
cos(2πw(a+b)/p), … and reads the answer out through cos(2πw(a+b−c)/p). Every activation
is then a function of (a, b) whose 2-D Fourier spectrum sits on one frequency per
direction: the ground truth against which interaction-basis directions and modules are
checked (:mod:`.fourier`).

Architecture (all blocks carry their own skip connection, so that every node layer is the
whole input of one module):

- ``embed``: x_s = W_E[token_s] + W_pos[s], shape (B, 3, d);
- ``attn``: multi-head attention, query at the last position only:
  r = x_2 + Σ_h W_O^h softmax(q_2^h·k_s^h/√d_h) v_s^h, shape (B, d);
- ``mlp``: z = [r, ReLU(W_in r + b_in)] (B, d + d_mlp), then ``mlp.readout``:
  r' = z_{:d} + W_out z_{d:} + b_out (B, d);
- ``unembed``: logits = W_U r' (B, p).

Node layers (inputs of modules): ``"attn"`` (B, 3, d) with positions, ``"mlp"`` (B, d),
``"mlp.readout"`` (B, d + d_mlp): residual and MLP hidden together, as in LIB,
``"unembed"`` (B, d), ``"output"`` (B, p).

Weights trained by :func:`train` with the default :class:`ModAddConfig` ship as
``data/modadd.safetensors``, so :func:`load_model` needs no training; another config is
trained once (a few minutes on 2 CPU cores) and cached under ``$INTERMOD_CACHE`` (default
``~/.cache/intermod``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.activations import node_activations
from ..core.basis import Basis, compute_basis
from ..core.edges import build_graph
from ..core.graph import InteractionGraph
from ..core.partition import Partition, find_modules
from .base import Example
from .fourier import fourier_labels, frequency_alignment
from .training import deterministic

__all__ = [
    "DEFAULT_LAYERS",
    "ModAddConfig",
    "ModAddResult",
    "ModAddTransformer",
    "accuracy",
    "all_inputs",
    "analyse",
    "build",
    "graph_fourier_labels",
    "key_frequencies",
    "load_model",
    "save",
    "train",
]

DEFAULT_LAYERS = ("mlp", "mlp.readout", "unembed", "output")
_DATA = Path(__file__).resolve().parent / "data" / "modadd.safetensors"
_F32 = torch.float32  # weights are float32 whatever torch's default dtype (reproducible training)


@dataclass(frozen=True)
class ModAddConfig:
    """Model size and training recipe (full-batch AdamW, as in Nanda et al.)."""

    p: int = 59
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    train_fraction: float = 0.6
    steps: int = 4000
    lr: float = 3e-3
    weight_decay: float = 1.0
    seed: int = 0


class _Attention(nn.Module):
    """Attention block, last-position query: (B, 3, d) → (B, d), skip connection included."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False, dtype=_F32)
        self.k = nn.Linear(d_model, d_model, bias=False, dtype=_F32)
        self.v = nn.Linear(d_model, d_model, bias=False, dtype=_F32)
        self.o = nn.Linear(d_model, d_model, bias=False, dtype=_F32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        dh = d // self.n_heads
        q = self.q(x[:, -1]).view(b, self.n_heads, 1, dh)
        k = self.k(x).view(b, s, self.n_heads, dh).transpose(1, 2)
        v = self.v(x).view(b, s, self.n_heads, dh).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (B, H, 1, S)
        heads = (att @ v).reshape(b, d)
        return x[:, -1] + self.o(heads)


class _Readout(nn.Module):
    """z = [r, h] (B, d + d_mlp) ↦ r + W_out h + b_out (B, d)."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.out = nn.Linear(d_mlp, d_model, dtype=_F32)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., : self.d_model] + self.out(z[..., self.d_model :])


class _MLP(nn.Module):
    """r (B, d) ↦ readout([r, ReLU(W_in r + b_in)]) (B, d)."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp, dtype=_F32)
        self.readout = _Readout(d_model, d_mlp)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.cat([r, torch.relu(self.fc_in(r))], dim=-1))


class ModAddTransformer(nn.Module):
    """One-layer transformer for (a + b) mod p: tokens (B, 3) int64 → logits (B, p), float32."""

    def __init__(self, cfg: ModAddConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.p + 1, cfg.d_model, dtype=_F32)
        self.pos = nn.Parameter(torch.zeros(3, cfg.d_model, dtype=_F32))
        self.attn = _Attention(cfg.d_model, cfg.n_heads)
        self.mlp = _MLP(cfg.d_model, cfg.d_mlp)
        self.unembed = nn.Linear(cfg.d_model, cfg.p, bias=False, dtype=_F32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        return self.unembed(self.mlp(self.attn(x)))


def all_inputs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair: tokens (p², 3) = [a, b, p] in row-major (a, b) order, labels (p²,)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return tokens, (a + b) % p


def _split(cfg: ModAddConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/test split of the p² pairs: (train indices, test indices)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(cfg.p**2, generator=gen)
    n_train = round(cfg.train_fraction * cfg.p**2)
    return perm[:n_train], perm[n_train:]


@torch.no_grad()
def accuracy(model: ModAddTransformer) -> dict[str, float]:
    """Accuracy on the training pairs, the held-out pairs and all p² pairs."""
    tokens, labels = all_inputs(model.cfg.p)
    correct = (model(tokens).argmax(-1) == labels).double()
    tr, te = _split(model.cfg)
    return {
        "train": correct[tr].mean().item(),
        "test": correct[te].mean().item(),
        "all": correct.mean().item(),
    }


def train(cfg: ModAddConfig = ModAddConfig(), log_every: int = 0) -> ModAddTransformer:
    """Train from scratch, deterministically for a given ``cfg.seed`` (full batch, AdamW
    with betas (0.9, 0.98), linear warm-up over 10 steps, cross-entropy in float32), inside
    :func:`~intermod.analysis.examples.training.deterministic` (one thread, the caller's RNG
    untouched). The weight decay drives the network from memorising to the Fourier algorithm
    ("grokking"); ``log_every`` > 0 prints losses and accuracies."""
    with deterministic(cfg.seed):
        return _train(cfg, log_every)


def _train(cfg: ModAddConfig, log_every: int) -> ModAddTransformer:
    model = ModAddTransformer(cfg)
    tokens, labels = all_inputs(cfg.p)
    tr, te = _split(cfg)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    start = time.perf_counter()
    for step in range(cfg.steps):
        loss = nn.functional.cross_entropy(model(tokens[tr]), labels[tr])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            with torch.no_grad():
                test_loss = nn.functional.cross_entropy(model(tokens[te]), labels[te])
            acc = accuracy(model)
            print(
                f"step {step:5d}  train {loss.item():.4f}  test {test_loss.item():.4f}  "
                f"acc train {acc['train']:.3f} test {acc['test']:.3f}  "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
    return model.eval()


def _cache_path(cfg: ModAddConfig) -> Path:
    root = Path(os.environ.get("INTERMOD_CACHE", Path.home() / ".cache" / "intermod"))
    tag = "_".join(f"{k}{v}" for k, v in asdict(cfg).items())
    return root / "modadd" / f"{tag}.safetensors"


def save(model: ModAddTransformer, path: str | os.PathLike) -> None:
    """Write the weights and the config (safetensors metadata ``"config"``, JSON)."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path), metadata={"config": json.dumps(asdict(model.cfg))})


def _load(path: Path) -> ModAddTransformer:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(os.fspath(path), "pt") as f:
        cfg = ModAddConfig(**json.loads(f.metadata()["config"]))
    model = ModAddTransformer(cfg)
    model.load_state_dict(load_file(os.fspath(path)))
    return model.eval()


def load_model(cfg: ModAddConfig = ModAddConfig(), retrain: bool = False) -> ModAddTransformer:
    """The trained model for ``cfg``: the shipped weights when ``cfg`` is the default, else
    the cached ones, else trained now (and cached). ``retrain`` ignores both files."""
    if not retrain and cfg == ModAddConfig() and _DATA.exists():
        return _load(_DATA)
    cached = _cache_path(cfg)
    if not retrain and cached.exists():
        return _load(cached)
    model = train(cfg)
    save(model, cached)
    return model


def key_frequencies(model: ModAddTransformer, share: float = 0.05) -> dict[int, float]:
    """Frequencies w whose share of the token embedding's power Σ_d |Σ_a W_E[a, d] e^{−2πiwa/p}|²
    (over w ≥ 1) is at least ``share``, largest first: the frequencies the network uses."""
    p = model.cfg.p
    spec = (np.abs(np.fft.rfft(model.embed.weight[:p].detach().double().numpy(), axis=0)) ** 2)
    per_freq = spec.sum(1)[1:]
    per_freq = per_freq / per_freq.sum()
    order = np.argsort(-per_freq)
    return {int(w + 1): float(per_freq[w]) for w in order if per_freq[w] >= share}


def graph_fourier_labels(
    model: ModAddTransformer, graph: InteractionGraph
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fourier labels of every node of ``graph`` (in ``graph.nodes`` order): the dominant
    frequency (−1 for the constant direction), its share, and the power shares (n, W + 1).

    Direction i of a layer with basis C (``graph.bases``) is f ↦ C[:d, i]ᵀ f over all p²
    inputs; the bias-slot row of C only adds a constant, which the labels ignore.
    """
    tokens, _ = all_inputs(model.cfg.p)
    acts = node_activations(model, tokens, graph.layers)
    freq, frac, power = [], [], []
    for name in graph.layers:
        f = acts[name].double().numpy()
        C = np.asarray(graph.bases[name][0])
        labels = fourier_labels(f @ C[: f.shape[-1]], model.cfg.p)
        freq.append(labels.frequency)
        frac.append(labels.fraction)
        power.append(labels.power)
    frequency = np.concatenate(freq)
    frequency[graph.is_bias] = -1
    return frequency, np.concatenate(frac), np.concatenate(power)


def build(cfg: ModAddConfig = ModAddConfig()) -> Example:
    """The trained model, all p² inputs and :data:`DEFAULT_LAYERS`, as an
    :class:`~intermod.analysis.examples.base.Example` whose ``truth(graph)`` is the dominant
    Fourier frequency of every node (−1 for the constant direction)."""
    model = load_model(cfg)
    tokens, _ = all_inputs(cfg.p)

    def truth(graph: InteractionGraph) -> np.ndarray:
        return graph_fourier_labels(model, graph)[0]

    return Example("modadd", model, tokens, list(DEFAULT_LAYERS),
                   f"one-layer transformer on (a + b) mod {cfg.p}, modules vs Fourier frequencies",
                   truth, extra={"key_frequencies": key_frequencies(model)})


@dataclass
class ModAddResult:
    """What :func:`analyse` found: accuracy, key frequencies, basis, graph, modules, the
    Fourier label of every graph node and the module–frequency alignment."""

    accuracy: dict[str, float]
    key_frequencies: dict[int, float]
    basis: Basis
    graph: InteractionGraph
    partition: Partition
    frequency: np.ndarray
    fraction: np.ndarray
    alignment: dict
    timings: dict[str, float]

    def label_purity(self) -> dict[str, float]:
        """Per node layer, the Λ-weighted mean share of a direction's power at its dominant
        frequency (1 = every direction a single frequency); constant directions left out."""
        out = {}
        for name in self.graph.layers:
            start = self.graph.node_offset[name]
            sl = slice(start, start + self.graph.layer_sizes[name])
            lam, freq, frac = self.graph.Lambda[sl], self.frequency[sl], self.fraction[sl]
            keep = freq >= 1
            out[name] = float(lam[keep] @ frac[keep] / lam[keep].sum())
        return out

    def summary(self) -> dict:
        """Plain-data report of the run."""
        top = {}
        for name in self.graph.layers:
            start = self.graph.node_offset[name]
            idx = [i for i in range(start, start + self.graph.layer_sizes[name])
                   if self.frequency[i] >= 1][:8]
            top[name] = [(int(self.frequency[i]), round(float(self.fraction[i]), 2),
                          round(float(self.graph.Lambda[i]), 1)) for i in idx]
        part = self.partition
        return {
            "accuracy": self.accuracy,
            "key_frequencies": {w: round(v, 3) for w, v in self.key_frequencies.items()},
            "kept_directions": {n: self.basis[n].k for n in self.basis.layers},
            "top_directions (frequency, share, Lambda)": top,
            "label_purity": {k: round(v, 3) for k, v in self.label_purity().items()},
            "modules": {"epsilon": part.epsilon, "resolution": part.resolution,
                        "n_modules": part.n_modules, "cost_units": round(part.cost_units, 3)},
            "alignment": self.alignment,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }


def analyse(
    model: ModAddTransformer | None = None,
    layers: Sequence[str] = DEFAULT_LAYERS,
    *,
    epsilon: float = 1e-2,
    n_modules: int | None = None,
    resolution: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> ModAddResult:
    """Interaction basis (output target, all p² inputs), graph and modules of the trained
    model, every direction labelled by its dominant frequency, and the alignment of the
    modules with those labels (:func:`frequency_alignment`, key frequencies from
    :func:`key_frequencies`)."""
    model = load_model() if model is None else model
    tokens, _ = all_inputs(model.cfg.p)
    timings = {}
    t = time.perf_counter()
    basis = compute_basis(model, tokens, list(layers), seed=seed, progress=progress)
    timings["basis"] = time.perf_counter() - t
    t = time.perf_counter()
    graph = build_graph(model, tokens, basis, seed=seed, progress=progress)
    timings["graph"] = time.perf_counter() - t
    t = time.perf_counter()
    partition = find_modules(graph, epsilon=epsilon, n_modules=n_modules,
                             resolution=resolution, seed=seed)
    timings["modules"] = time.perf_counter() - t
    key = key_frequencies(model)
    frequency, fraction, power = graph_fourier_labels(model, graph)
    alignment = frequency_alignment(partition.membership, frequency, power, graph.Lambda, list(key))
    return ModAddResult(accuracy(model), key, basis, graph, partition, frequency, fraction,
                        alignment, timings)
