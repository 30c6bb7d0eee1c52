"""The results of :func:`~intermod.analysis.diagnostics.diagnose`: one
:class:`LayerDiagnostics` per node layer inside a :class:`DegeneracyReport`, with a plain-JSON
round trip (``to_dict`` / ``from_dict``). The formulas behind every field are in
:mod:`.counting` (free directions, rank_ε) and :mod:`.synchrony` (blocks, dead neurons)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.reprs import summary_repr

LOSS_NORMALISATION = ("L(θ) = (1/N) Σ_x ‖y(x;θ) − y(x;θ*)‖² (sum over output coordinates, mean "
                      "over the N samples); H = ∇²L(θ*) = (2/N) 𝒢𝒢ᵀ; spectra in loss units are "
                      "eigenvalues of H/2")


@dataclass
class LayerDiagnostics:
    """Diagnostics of one node layer (see the module docstring for every formula).

    Spectra are numpy float64 arrays, descending. ``spectrum_G``: the Gram used for counting
    (d_in_aug entries: covariance + slot with a bias, E[f fᵀ] without); ``spectrum_M``: M^l on
    the layer's features (bias slot excluded); ``spectrum_J``: Jacobian Gram at the output of
    the consuming ``nn.Linear`` (d_out entries). ``scale_*`` convert them to loss units.
    ``sync_*`` describe the ReLU-like module whose output is this layer (None when none);
    ``dead_neurons`` are its neurons whose output is 0 on every sample (never in a sync block).
    """

    name: str
    dim: int
    spectrum_G: np.ndarray
    spectrum_M: np.ndarray
    scale_G: float
    scale_M: float
    rank_G: int
    rank_M: int
    rank_G_numerical: int
    rank_M_numerical: int
    consumer: str | None = None            # path of the consuming nn.Linear
    has_bias: bool | None = None
    d_in_aug: int | None = None
    d_out: int | None = None
    jacobian_cut: str | None = None        # where J is taken (a ReLU path, a node layer, "output")
    spectrum_J: np.ndarray | None = None
    scale_J: float | None = None
    rank_J: int | None = None
    rank_J_numerical: int | None = None
    missing_G: int | None = None
    missing_J: int | None = None
    n_free_activation: int = 0
    n_free_jacobian: int = 0
    n_free_overlap: int = 0
    nonlinearity: str | None = None        # path of the ReLU-like module producing this layer
    sync_tol: float | None = None
    sync_blocks: list[list[int]] = field(default_factory=list)
    sync_blocks_exact: list[list[int]] = field(default_factory=list)
    sync_block_sizes: list[int] = field(default_factory=list)
    sync_measures: list[float] = field(default_factory=list)
    sync_block_s: list[int] = field(default_factory=list)   # s_a: rank of the block's preactivations
    sync_block_k: list[int] = field(default_factory=list)   # k_a: Jacobian rank the block adds
    dead_neurons: list[int] = field(default_factory=list)   # output 0 on every sample
    n_dead: int = 0
    n_free_sync: int = 0
    n_free_sync_naive: int = 0
    n_free_rescaling: int = 0
    n_free: int = 0
    notes: list[str] = field(default_factory=list)

    __repr__ = summary_repr


@dataclass
class DegeneracyReport:
    """Result of :func:`diagnose`. ``layers``: node layer name -> :class:`LayerDiagnostics`
    (forward order). ``behavioural_rank`` is None when not computed (``behavioural_reason``)."""

    epsilon: float
    layers: dict[str, LayerDiagnostics]
    n_params: int
    n_params_covered: int
    n_free_lower_bound: int
    n_samples: int
    behavioural_rank: int | None = None
    behavioural_rank_numerical: int | None = None
    behavioural_spectrum: np.ndarray | None = None
    behavioural_reason: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    loss_normalisation: str = LOSS_NORMALISATION

    __repr__ = summary_repr

    @property
    def n_eff_upper_bound(self) -> int:
        """n_params − n_free_lower_bound."""
        return self.n_params - self.n_free_lower_bound

    @property
    def n_free_by_source(self) -> dict[str, int]:
        """Totals over layers of each source (overlap already subtracted from ``activation``
        + ``jacobian`` in ``overlap``, as a negative number)."""
        keys = {"activation": "n_free_activation", "jacobian": "n_free_jacobian",
                "rescaling": "n_free_rescaling", "synchronisation": "n_free_sync"}
        out = {k: int(sum(getattr(ld, f) for ld in self.layers.values())) for k, f in keys.items()}
        out["overlap"] = -int(sum(ld.n_free_overlap for ld in self.layers.values()))
        return out

    @property
    def n_free_behavioural(self) -> int | None:
        """n_params − behavioural_rank (Hessian null-space dimension at ε), when computed."""
        return None if self.behavioural_rank is None else self.n_params - self.behavioural_rank

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (lists, numbers, strings, None); ``json.dumps`` works on it."""
        layers = {name: {k: _plain(v) for k, v in asdict(ld).items()}
                  for name, ld in self.layers.items()}
        d = {k: _plain(v) for k, v in asdict(self).items() if k != "layers"}
        d["layers"] = layers
        d["layer_order"] = list(self.layers)
        d["n_eff_upper_bound"] = self.n_eff_upper_bound
        d["n_free_behavioural"] = self.n_free_behavioural
        d["n_free_by_source"] = self.n_free_by_source
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DegeneracyReport:
        """Inverse of :meth:`to_dict` (spectra come back as numpy arrays)."""
        arrays = {"spectrum_G", "spectrum_M", "spectrum_J"}
        fields_ld = set(LayerDiagnostics.__dataclass_fields__)
        layers = {}
        for name in d.get("layer_order", list(d["layers"])):
            raw = d["layers"][name]
            kw = {k: (np.asarray(v, dtype=np.float64) if k in arrays and v is not None else v)
                  for k, v in raw.items() if k in fields_ld}
            layers[name] = LayerDiagnostics(**kw)
        fields_top = set(cls.__dataclass_fields__) - {"layers"}
        kw = {k: v for k, v in d.items() if k in fields_top}
        if kw.get("behavioural_spectrum") is not None:
            kw["behavioural_spectrum"] = np.asarray(kw["behavioural_spectrum"], dtype=np.float64)
        return cls(layers=layers, **kw)

    def to_json(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh)

    def summary(self) -> str:
        """A short human-readable table."""
        beh = self.behavioural_rank if self.behavioural_rank is not None else "n/a"
        lines = [f"ε = {self.epsilon:g}   n_params = {self.n_params}   "
                 + f"N_free ≥ {self.n_free_lower_bound}   behavioural rank = {beh}"]
        for ld in self.layers.values():
            blocks = ",".join(str(s) for s in ld.sync_block_sizes) or "-"
            lines.append(f"  {ld.name:>12}: d={ld.dim:<5} rank_G={ld.rank_G:<5} "
                         f"rank_M={ld.rank_M:<5} rank_J={ld.rank_J if ld.rank_J is not None else '-':<5} "
                         f"sync blocks={blocks:<10} dead={ld.n_dead:<4} n_free={ld.n_free}")
        return "\n".join(lines)


def _plain(v: Any) -> Any:
    """``v`` as plain JSON values: arrays as lists, non-finite floats as None, dtypes as names."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    if isinstance(v, torch.device):
        return str(v)
    return v
