"""Degeneracy diagnostics: how many parameters a network really uses, and why (paper §3, seed 002).

:func:`diagnose` reports, per node layer, the spectra and ε-ranks of the activation Gram G and
the Jacobian Gram M (read from :func:`intermod.analysis.compute_basis`, the one place those
Grams are computed), the synchronised-neuron blocks of ReLU-like layers, and the free
directions each source implies; at the top level, their total as a lower bound on N_free next
to the nominal parameter count and, for small models, the rank of the behavioural-gradient
matrix (= rank of the behavioural-loss Hessian).

Structure assumed for the counts
--------------------------------
A node layer l named by a module path is the *input* f^l of that module. When that module is
an ``nn.Linear`` (weight W^l: d_out × d_in, optional bias b^l) its output p^{l+1} = W^l f^l + b^l
either feeds a ReLU-like module (``nn.ReLU``/``LeakyReLU``/``PReLU``) whose output is the next
node layer, or is itself the next node layer or the model output. This is detected from one
traced forward pass (tensor identity), so any ``nn.Module`` with these pieces works; a node
layer consumed by anything else gets its spectra and ranks but no counts (``notes`` says why).

Bias slot and d. With a bias, W_aug = [W | b] acts on f_aug = (f, 1): the slot is one more
input coordinate, d_in_aug = d_in + 1. The uncentred Gram E[f_aug f_augᵀ] and the centred
Gram with the slot as its own direction, [[Cov, 0], [0, 1]], are congruent (Y is invertible),
so they have the same rank; we use the latter (DESIGN: the constant direction never mixes with
data directions), so ``spectrum_G`` is eig(Cov) plus the slot's eigenvalue 1. Without a bias
the relevant Gram is the uncentred E[f fᵀ] (a constant direction c·f = const ≠ 0 is *not* free
without a bias to absorb it) and d_in_aug = d_in.

Counting rules (per consuming ``nn.Linear``, exact for exact ranks):
- activation: every missing direction c of G (c·f_aug(x) = 0 on all data) makes W_aug → W_aug + u cᵀ
  free for all u ∈ R^{d_out}: ``n_free_activation = d_out · (d_in_aug − rank_G)`` (paper §3.1.1);
- Jacobian: with J = ∂y/∂p^{l+1} (the Jacobian Gram at the *output* of W^l, i.e. M at the ReLU's
  input, not at the next node layer, which sits after the ReLU), every missing direction v
  (J(x) v = 0) makes W_aug → W_aug + v wᵀ Hessian-free for all w ∈ R^{d_in_aug}:
  ``n_free_jacobian = d_in_aug · (d_out − rank_J)`` (paper §3.1.2; a Hessian zero, not
  always an exact free direction);
- the two families intersect in the (d_in_aug − rank_G)(d_out − rank_J) directions v cᵀ, counted
  once: ``n_free_overlap`` is subtracted. Together they are exactly the null space of the
  per-sample gradients of W_aug, range(J)ᵀ ⊗ range(G) having dimension rank_J · rank_G;
- ReLU-like layers (paper §3.2; attached to the node layer f^{l+1} = ReLU(p^{l+1}), counted when
  f^{l+1} is consumed by an ``nn.Linear`` W^{l+1}): a block S_a of synchronised neurons allows
  W^l → C W^l, W^{l+1} → W^{l+1} C⁻¹ with C block-diagonal and non-negative on the block: |S_a|²
  directions, |S_a| of which are the per-neuron rescalings every ReLU neuron has. DESIGN's count
  of the synchronisation proper is Σ_a |S_a|² − d (all blocks, singletons included), reported as
  ``n_free_sync_naive`` = Σ_{|S_a|≥2} |S_a|(|S_a| − 1). It double-counts whatever the activation
  and Jacobian rules already counted: duplicated neurons (their preactivations are dependent),
  dead neurons (they share the "off" pattern, and both their rows and columns are free already),
  neurons ignored downstream. Controlling for both sides (paper eq. 21 does it for the
  preactivations), the directions E ∈ R^{S_a×S_a} that are new modulo the counted ones are those
  with Π_Q E Π_P ≠ 0, where P = span of the block's preactivations over the data and Q = the
  Jacobian directions the block adds to the rest of the layer, so a block contributes

      N_a = s_a · k_a,   s_a = rank_ε E[p_S p_Sᵀ] (eq. 21),
      k_a = |S_a| − rank(rows S of a basis of null_ε J),

  generically (the exact number is the rank of the per-sample products J_S(x)ᵀ p_S(x)ᵀ, which
  s_a·k_a bounds above and equals unless J and p conspire over the data). Singletons give the
  rescalings, n_i = s_i·k_i ∈ {0, 1}: ``n_free_rescaling = Σ_i n_i`` (every neuron that is
  alive and used), and ``n_free_sync = Σ_{|S_a|≥2} (N_a − Σ_{i∈S_a} n_i)`` is what
  synchronisation adds; for independent, alive, used neurons it is DESIGN's |S_a|² − |S_a|.

``n_free = n_free_activation + n_free_jacobian − n_free_overlap + n_free_rescaling + n_free_sync``
per node layer, and ``n_free_lower_bound`` is their sum: a lower bound on the dimension of the
Hessian's null space, n_params − rank H (rigorous for the activation/Jacobian rules, generic for
the ReLU term as said above; only the analysed ``nn.Linear`` s count; other free
directions, e.g. a bias shift through an always-on ReLU layer, are not found). On every
network of ``tests/test_diagnostics.py`` it equals n_params − rank H exactly.

rank_ε (noise scale ε, a behavioural-loss value)
-------------------------------------------------
The behavioural loss is L(θ) = (1/N) Σ_x ‖y(x; θ) − y(x; θ*)‖² (see
:mod:`intermod.analysis.diagnostics.behavioural`). An eigenvalue is compared with ε after converting it to
loss units by the top eigenvalue of its partner Gram:

    rank_ε(G) = #{D_i · λ_max(J) > max(ε, rtol · D_max · λ_max(J))},
    rank_ε(J) = #{κ_i · λ_max(G) > max(ε, …)},   rank_ε(M) = #{μ_i · λ_max(G) > …},

D_i · λ_max(J) is (to the extent f and J are independent over the data) the largest increase
of L from a unit-norm change of W along activation direction i; likewise for the Jacobian
directions. Layers without a partner Gram (the output, unknown consumers) use scale 1 (the
output Gram is already in loss units). The relative floor (1e-10 in float64, 1e-6 in float32:
the core's ``default_tol``) makes ε = 0 the numerical
rank (reported as ``*_numerical``). The behavioural spectrum is the eigenvalues of H/2 =
(1/N)𝒢𝒢ᵀ, already in loss units, compared with ε directly. Approximate synchronisation uses
the paper's eq. 20 measure (activation units²) against ``sync_tol`` (default: ε).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.inputs import Inputs, iter_batches, resolve_device
from ..core.nodes import _eval_mode
from ..core.progress import Progress
from .behavioural import RTOL, BehaviouralResult, behavioural_rank, rank_eps
from .synchrony import RELU_LIKE, SyncAccumulator, synchronisation

OUTPUT = "output"

LOSS_NORMALISATION = ("L(θ) = (1/N) Σ_x ‖y(x;θ) − y(x;θ*)‖² (sum over output coordinates, mean "
                      "over the N samples); H = ∇²L(θ*) = (2/N) 𝒢𝒢ᵀ; spectra in loss units are "
                      "eigenvalues of H/2")


# ----------------------------------------------------------------------------- results
@dataclass
class LayerDiagnostics:
    """Diagnostics of one node layer (see the module docstring for every formula).

    Spectra are numpy float64 arrays, descending. ``spectrum_G``: the Gram used for counting
    (d_in_aug entries: covariance + slot with a bias, E[f fᵀ] without); ``spectrum_M``: M^l on
    the layer's features (bias slot excluded); ``spectrum_J``: Jacobian Gram at the output of
    the consuming ``nn.Linear`` (d_out entries). ``scale_*`` convert them to loss units.
    ``sync_*`` describe the ReLU-like module whose output is this layer (None when none).
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
    n_free_sync: int = 0
    n_free_sync_naive: int = 0
    n_free_rescaling: int = 0
    n_free: int = 0
    notes: list[str] = field(default_factory=list)


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
                         f"sync blocks={blocks:<10} n_free={ld.n_free}")
        return "\n".join(lines)


def _plain(v: Any) -> Any:
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


# ----------------------------------------------------------------------------- structure
@dataclass
class _Link:
    """How node layer ``layer`` is consumed: an nn.Linear ``consumer`` whose output goes
    through ReLU-like ``act`` (or not) to node layer ``next`` (or "output"/None)."""

    layer: str
    consumer: str | None = None
    linear: nn.Linear | None = None
    act: str | None = None
    next: str | None = None
    note: str | None = None


def _first_tensor(args: Any) -> Tensor | None:
    if isinstance(args, Tensor):
        return args
    if isinstance(args, (tuple, list)) and args and isinstance(args[0], Tensor):
        return args[0]
    return None


def _call(model: nn.Module, batch: Any, params: dict[str, Tensor] | None = None) -> Any:
    if params is None:
        return model(**batch) if isinstance(batch, dict) else model(batch)
    if isinstance(batch, dict):
        return functional_call(model, params, args=(), kwargs=batch)
    return functional_call(model, params, (batch,))


def trace_structure(model: nn.Module, batch: Any, layers: Sequence[str],
                    output_fn: Callable[[Any], Tensor],
                    run: Callable[[Any], Any] | None = None) -> tuple[list[_Link], list[str]]:
    """One forward pass (``run(batch)``, default ``model(batch)``) with hooks on every module;
    returns the links of each node layer (in forward order) and the forward order of all module
    paths that ran. Links are found by tensor identity (the object a module returned is the
    object the next module received)."""
    modules = dict(model.named_modules())
    for name in layers:
        if name != OUTPUT and name not in modules:
            raise ValueError(f"layer {name!r} is not a module path of the model")
    seen_in: dict[str, Tensor] = {}
    seen_out: dict[str, Tensor] = {}
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def pre(name):
        def hook(mod, args, kwargs=None):
            calls[name] = calls.get(name, 0) + 1
            t = _first_tensor(args)
            if t is not None and name not in seen_in:
                seen_in[name] = t
                order.append(name)
        return hook

    def post(name):
        def hook(mod, args, out):
            t = _first_tensor(out)
            if t is not None and name not in seen_out:
                seen_out[name] = t
        return hook

    for name, mod in modules.items():
        if name == "":
            continue
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            out = output_fn(run(batch) if run is not None else _call(model, batch))
    finally:
        for h in handles:
            h.remove()

    def consumer_of(t: Tensor, kinds: tuple | None = None, among: Sequence[str] | None = None):
        names = among if among is not None else order
        for n in names:
            if n in seen_in and seen_in[n] is t and (kinds is None or isinstance(modules[n], kinds)):
                return n
        return None

    node_mods = [n for n in layers if n != OUTPUT]
    missing = [n for n in node_mods if n not in seen_in]
    if missing:
        raise ValueError(f"layers {missing} were not called with a tensor input in a forward pass")
    fwd = sorted(node_mods, key=order.index) + ([OUTPUT] if OUTPUT in layers else [])
    links = []
    for name in fwd:
        link = _Link(layer=name)
        if name != OUTPUT and calls.get(name, 0) > 1:
            link.note = (f"module {name!r} is called {calls[name]} times per forward pass (shared "
                         "weights): spectra only, no free-direction counts")
        elif name != OUTPUT and isinstance(modules[name], nn.Linear):
            link.consumer, link.linear = name, modules[name]
            z = seen_out.get(name)
            if z is not None:
                act = consumer_of(z, RELU_LIKE)
                if act is not None and calls.get(act, 0) > 1:
                    link.note = (f"ReLU-like module {act!r} is called {calls[act]} times per "
                                 "forward pass: give each use its own module to get counts")
                    links.append(link)
                    continue
                target = seen_out.get(act) if act is not None else z
                link.act = act
                nxt = consumer_of(target, among=node_mods)
                if nxt is not None:
                    link.next = nxt
                elif target is out:
                    link.next = OUTPUT
        links.append(link)
    return links, order


# ----------------------------------------------------------------------------- helpers
def _eig_desc(A: np.ndarray) -> np.ndarray:
    if A.size == 0:
        return np.zeros(0)
    A = (A + A.T) / 2
    return np.clip(np.linalg.eigvalsh(A)[::-1], 0.0, None).copy()


def _np(t: Any) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().to(torch.float64).cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def _second_moments(lb: Any, center: bool, include_bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """(Cov, E[f fᵀ]) on the d features from a LayerBasis's raw G and mean."""
    G = _np(lb.G)
    mu = _np(lb.mean).reshape(-1)
    d = mu.shape[0]
    S = G[:d, :d]
    if center:
        cov = S
        second = S + np.outer(mu, mu)
    else:
        second = S
        cov = S - np.outer(mu, mu)
    return (cov + cov.T) / 2, (second + second.T) / 2


def _features_M(lb: Any) -> np.ndarray:
    M = _np(lb.M)
    d = _np(lb.mean).reshape(-1).shape[0]
    return M[:d, :d]


def _count_gram(lb: Any, has_bias: bool, center: bool, include_bias: bool) -> np.ndarray:
    """Spectrum of the Gram that decides free activation directions (module docstring)."""
    cov, second = _second_moments(lb, center, include_bias)
    if has_bias:
        return np.sort(np.concatenate([_eig_desc(cov), [1.0]]))[::-1].copy()
    return _eig_desc(second)


def _top(spec: np.ndarray | None) -> float:
    return float(spec.max()) if spec is not None and spec.size else 0.0

def _relu_block_ranks(P2: np.ndarray, J: np.ndarray, blocks: list[list[int]], epsilon: float,
                      rtol: float = RTOL) -> tuple[list[int], list[int], np.ndarray]:
    """(s_a, k_a) for each block and the per-neuron singleton count n_i = s_i·k_i.

    s_a = rank_ε of the block's uncentred preactivation Gram E[p_S p_Sᵀ] (paper eq. 21),
    scaled by λ_max(J); k_a = |S| − rank of the rows S of a basis of null_ε(J) (the Jacobian
    directions the block adds to the rest of the layer), scaled by λ_max(E[p pᵀ]).
    """
    d = J.shape[0]
    sP = _top(_eig_desc(J))
    spec_P = _eig_desc(P2)
    thr_P = max(epsilon, rtol * _top(spec_P) * sP)
    lamJ, vecJ = np.linalg.eigh((J + J.T) / 2)
    sJ = _top(spec_P)
    thr_J = max(epsilon, rtol * max(float(lamJ.max(initial=0.0)), 0.0) * sJ)
    null = vecJ[:, lamJ * sJ <= thr_J] if sJ > 0 and lamJ.max(initial=0.0) > 0 else np.eye(d)

    def s_rank(idx):
        if sP <= 0 or _top(spec_P) <= 0:
            return 0
        return int((_eig_desc(P2[np.ix_(idx, idx)]) * sP > thr_P).sum())

    def k_rank(idx):
        rows = null[idx, :]
        if rows.size == 0:
            return len(idx)
        sv = np.linalg.svd(rows, compute_uv=False)
        return len(idx) - int((sv > 1e-8).sum())

    s_blk = [s_rank(np.asarray(b)) for b in blocks]
    k_blk = [k_rank(np.asarray(b)) for b in blocks]
    n_single = np.array([s_rank(np.asarray([i])) * k_rank(np.asarray([i])) for i in range(d)],
                        dtype=np.int64)
    return s_blk, k_blk, n_single



# ----------------------------------------------------------------------------- entry point
def diagnose(model: nn.Module, inputs: Inputs, layers: Sequence[str], epsilon: float, *,
             include_bias: bool = True, center: bool = True, jacobian_target: str = "output",
             sync_tol: float | None = None, behavioural_max_params: int = 4096,
             output_fn: Callable[[Any], Tensor] | None = None, n_probes: int | None = None,
             batch_size: int = 512, device: str | torch.device = "auto",
             dtype: torch.dtype = torch.float64, seed: int = 0, progress: bool = True,
             callback: Callable[[str, int, int], None] | None = None) -> DegeneracyReport:
    """Degeneracy diagnostics of ``model`` on ``inputs`` at noise scale ``epsilon``.

    Parameters mirror :func:`intermod.analysis.compute_basis` (``layers``: module paths whose
    *input* is a node layer, or ``"output"``). ``jacobian_target`` only decides which M^l is
    reported (``spectrum_M``/``rank_M``); the counts always use Jacobians of the output.
    ``sync_tol``: tolerance on the paper's eq. 20 measure |r_a|² (activation units², default ε). ``behavioural_max_params``: the behavioural
    Gram is computed only for models with at most this many trainable parameters (memory
    O(P²) float64); above it ``behavioural_rank`` is None and ``behavioural_reason`` says why.

    Returns a :class:`DegeneracyReport`; every formula is in the module docstring. The model is
    evaluated in eval mode and never modified.
    """
    with _eval_mode(model):
        return _diagnose(model, inputs, layers, epsilon, include_bias=include_bias, center=center,
                         jacobian_target=jacobian_target, sync_tol=sync_tol,
                         behavioural_max_params=behavioural_max_params, output_fn=output_fn,
                         n_probes=n_probes, batch_size=batch_size, device=device, dtype=dtype,
                         seed=seed, progress=progress, callback=callback)


def _diagnose(model, inputs, layers, epsilon, *, include_bias, center, jacobian_target, sync_tol,
              behavioural_max_params, output_fn, n_probes, batch_size, device, dtype, seed,
              progress, callback) -> DegeneracyReport:
    from ..core.basis import (
        compute_basis,  # the core library: the one place G and M are computed
        default_tol,
    )
    from ..core.outputs import default_output

    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if jacobian_target not in ("output", "next_layer"):
        raise ValueError(f"jacobian_target must be 'output' or 'next_layer', got {jacobian_target!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers: give at least one node layer")
    output_fn = output_fn or default_output
    rtol = default_tol(dtype)   # relative floor of the numerical rank, as the core's tol_G/tol_M
    sync_tol = float(epsilon if sync_tol is None else sync_tol)
    dev = resolve_device(device)
    prog = Progress(progress, callback)
    modules = dict(model.named_modules())

    named = dict(model.named_parameters())
    params = {k: v.detach().to(device=dev, dtype=dtype) for k, v in named.items()}
    buffers = {k: (b.detach().to(device=dev, dtype=dtype) if b.is_floating_point() else b.to(dev))
               for k, b in model.named_buffers()}
    state = {**params, **buffers}

    def to_dev(batch):
        if isinstance(batch, dict):
            return {k: (v.to(dev, dtype) if torch.is_floating_point(v) else v.to(dev))
                    if isinstance(v, Tensor) else v for k, v in batch.items()}
        return batch.to(dev, dtype) if torch.is_floating_point(batch) else batch.to(dev)

    first = to_dev(next(iter(iter_batches(inputs, min(batch_size, 4)))))

    def traced_call(batch):
        return functional_call(model, state, (batch,)) if not isinstance(batch, dict) else \
            functional_call(model, state, args=(), kwargs=batch)

    links, order = trace_structure(model, first, layers, output_fn, run=traced_call)
    by_layer = {lk.layer: lk for lk in links}
    node_order = [lk.layer for lk in links]

    # --- G and M from the core library, at the node layers plus the auxiliary cut points
    #     (the inputs of the ReLU-like modules: the preactivations, where J and s_a live).
    aux = sorted({lk.act for lk in links if lk.act is not None} - set(node_order), key=order.index)
    need_output = any(lk.next == OUTPUT and lk.act is None for lk in links) and OUTPUT not in node_order
    basis_opts = {"center": center, "include_bias": include_bias, "n_probes": n_probes,
                  "output_fn": output_fn, "dtype": dtype, "batch_size": batch_size,
                  "device": device, "seed": seed, "progress": progress, "callback": callback}

    def fwd_sorted(names):
        mods = sorted({n for n in names if n != OUTPUT}, key=order.index)
        return mods + ([OUTPUT] if OUTPUT in names else [])

    # The counts always use Jacobians of the behavioural output: with "next_layer" a direction
    # the next layer's basis dropped (zero variance there) would look like a missing Jacobian
    # direction although moving the weights along it changes the output.
    all_cuts = fwd_sorted(node_order + aux + ([OUTPUT] if need_output else []))
    basis = compute_basis(model, inputs, all_cuts, jacobian_target="output", **basis_opts)
    if jacobian_target == "next_layer":
        # M^l (spectrum_M, rank_M) as the user's basis defines it: local, on the user's chain.
        basis_user = compute_basis(model, inputs, node_order, jacobian_target="next_layer",
                                   **basis_opts)
    else:
        basis_user = basis

    # --- synchronisation: one streaming pass with hooks on the ReLU-like modules
    acts = [lk.act for lk in links if lk.act is not None and lk.next is not None]
    sync_res = {}
    if acts:
        accs: dict[str, SyncAccumulator] = {}
        handles = []
        store: dict[str, Tensor] = {}

        def pre(name):
            def hook(mod, args):
                store[name] = args[0].detach().clone()
            return hook

        def post(name):
            def hook(mod, args, out):
                p = store.pop(name)
                if name not in accs:
                    accs[name] = SyncAccumulator(p.shape[-1], device=dev)
                accs[name].add(p, out)
            return hook

        for name in acts:
            handles.append(modules[name].register_forward_pre_hook(pre(name)))
            handles.append(modules[name].register_forward_hook(post(name)))
        try:
            with torch.no_grad():
                for batch in prog.track(iter_batches(inputs, batch_size), "synchronisation", None):
                    traced_call(to_dev(batch))
        finally:
            for h in handles:
                h.remove()
        sync_res = {name: synchronisation(acc, sync_tol) for name, acc in accs.items()}

    # --- per node layer
    report_layers: dict[str, LayerDiagnostics] = {}
    producer = {lk.next: lk for lk in links if lk.next is not None}
    for name in node_order:
        lk = by_layer[name]
        lb = basis_user[name]
        dim = int(_np(lb.mean).reshape(-1).shape[0])
        notes: list[str] = []
        spec_M = _eig_desc(_features_M(lb))
        # G spectrum: for counting when a Linear consumes the layer, else the core's G as is.
        if lk.linear is not None:
            has_bias = lk.linear.bias is not None
            spec_G = _count_gram(lb, has_bias, center, include_bias)
        else:
            has_bias = None
            spec_G = _eig_desc(_np(lb.G))
        spec_J = None
        cut = None
        if lk.linear is not None and lk.next is not None:
            cut = lk.act if lk.act is not None else lk.next
            spec_J = _eig_desc(_features_M(basis[cut]))
        scale_G = _top(spec_J) if spec_J is not None else 1.0
        scale_M = _top(spec_G) if name != OUTPUT else 1.0
        ld = LayerDiagnostics(
            name=name, dim=dim, spectrum_G=spec_G, spectrum_M=spec_M,
            scale_G=scale_G, scale_M=scale_M,
            rank_G=rank_eps(spec_G, epsilon, scale_G, rtol),
            rank_M=rank_eps(spec_M, epsilon, scale_M, rtol),
            rank_G_numerical=rank_eps(spec_G, 0.0, 1.0, rtol),
            rank_M_numerical=rank_eps(spec_M, 0.0, 1.0, rtol),
            notes=notes)
        if name == OUTPUT:
            notes.append("output layer: no parameters downstream, no counts")
        elif lk.note is not None:
            notes.append(lk.note)
        elif lk.linear is None:
            notes.append(f"module {name!r} is a {type(modules[name]).__name__}, not nn.Linear: "
                         "spectra only, no free-direction counts")
        elif lk.next is None:
            notes.append(f"the output of {name!r} reaches neither a node layer nor the model "
                         "output through a ReLU-like module: no counts")
        if spec_J is not None:
            W = lk.linear
            d_out, d_in = W.weight.shape
            ld.consumer, ld.has_bias, ld.jacobian_cut = name, has_bias, cut
            ld.d_in_aug = int(d_in + (1 if has_bias else 0))
            ld.d_out = int(d_out)
            ld.spectrum_J = spec_J
            ld.scale_J = _top(spec_G)
            ld.rank_J = rank_eps(spec_J, epsilon, ld.scale_J, rtol)
            ld.rank_J_numerical = rank_eps(spec_J, 0.0, 1.0, rtol)
            ld.missing_G = ld.d_in_aug - ld.rank_G
            ld.missing_J = ld.d_out - ld.rank_J
            ld.n_free_activation = ld.d_out * ld.missing_G
            ld.n_free_jacobian = ld.d_in_aug * ld.missing_J
            ld.n_free_overlap = ld.missing_G * ld.missing_J
            if has_bias and not include_bias:
                notes.append("include_bias=False but the consuming Linear has a bias: the count "
                             "still treats the bias as an input slot (d_in_aug = d_in + 1)")
        # synchronisation of the ReLU-like module that produces this layer
        src = producer.get(name)
        if src is not None and src.act is not None and src.act in sync_res:
            res = sync_res[src.act]
            ld.nonlinearity = src.act
            ld.sync_tol = res.tol
            ld.sync_blocks = res.blocks
            ld.sync_blocks_exact = res.blocks_exact
            ld.sync_block_sizes = [len(b) for b in res.blocks]
            ld.sync_measures = res.measures
            pre_lb = basis[src.act]
            _, P2 = _second_moments(pre_lb, center, include_bias)
            J = _features_M(pre_lb)
            s_blk, k_blk, n_single = _relu_block_ranks(P2, J, res.blocks, epsilon, rtol)
            ld.sync_block_s, ld.sync_block_k = s_blk, k_blk
            nxt = by_layer.get(name)
            if nxt is None or nxt.linear is None:
                notes.append(f"the output of {src.act!r} is not consumed by an nn.Linear node "
                             "layer: synchronised blocks reported, not counted")
            else:
                in_big = np.zeros(res.d, dtype=bool)
                for b in res.blocks:
                    in_big[np.asarray(b)] = True
                ld.n_free_rescaling = int(n_single.sum())
                ld.n_free_sync = int(sum(k * s_ for k, s_ in zip(k_blk, s_blk))
                                     - n_single[in_big].sum())
            ld.n_free_sync_naive = int(sum(len(b) * (len(b) - 1) for b in res.blocks))
        ld.n_free = int(ld.n_free_activation + ld.n_free_jacobian - ld.n_free_overlap
                        + ld.n_free_sync + ld.n_free_rescaling)
        report_layers[name] = ld

    n_params = sum(v.numel() for v in model.parameters() if v.requires_grad)
    covered = sum(sum(p.numel() for p in by_layer[n].linear.parameters())
                  for n in node_order if by_layer[n].linear is not None
                  and report_layers[n].spectrum_J is not None)
    report = DegeneracyReport(
        epsilon=float(epsilon), layers=report_layers, n_params=int(n_params),
        n_params_covered=int(covered),
        n_free_lower_bound=int(sum(ld.n_free for ld in report_layers.values())),
        n_samples=int(getattr(basis, "n_samples", 0) or 0),
        options={"include_bias": include_bias, "center": center, "jacobian_target": jacobian_target,
                     "sync_tol": sync_tol, "behavioural_max_params": behavioural_max_params,
                     "n_probes": n_probes, "batch_size": batch_size, "device": str(dev),
                     "dtype": str(dtype).replace("torch.", ""), "seed": seed, "rtol": rtol})

    # --- behavioural gradients
    if n_params > behavioural_max_params:
        gb = n_params ** 2 * 8 / 2 ** 30
        report.behavioural_reason = (
            f"not computed: the model has {n_params} trainable parameters > "
            f"behavioural_max_params={behavioural_max_params}; the Gram of behavioural gradients "
            f"is P×P float64 ({gb:.1f} GiB) and the per-sample gradients cost N·d_out backward "
            f"passes; raise behavioural_max_params to compute it")
    else:
        # per-sample Jacobians of one vmap call: chunk × (outputs per sample) × P float64 ≤ 128 MiB
        with torch.no_grad():
            out_first = output_fn(traced_call(first))
        per_sample = max(1, out_first[0].numel()) if out_first.ndim > 0 else 1
        chunk = max(1, min(batch_size, 2 ** 24 // (per_sample * max(n_params, 1))))
        batches = prog.track((b for big in iter_batches(inputs, batch_size)
                              for b in iter_batches(big, chunk)), "behavioural gradients", None)
        beh: BehaviouralResult = behavioural_rank(model, batches, epsilon, output_fn=output_fn,
                                                  dtype=dtype, device=dev, rtol=rtol)
        report.behavioural_rank = beh.rank
        report.behavioural_rank_numerical = beh.rank_numerical
        report.behavioural_spectrum = beh.spectrum
    return report


# ----------------------------------------------------------------------------- plot
def plot_spectra(report: DegeneracyReport, path: str, *, loss_units: bool = True) -> str:
    """Plot each node layer's spectra of G, M and J (and the behavioural spectrum) on a log
    axis with the noise scale ε as a horizontal line. ``loss_units``: multiply each spectrum by
    its ``scale_*`` (so ε is the rank cut-off for all of them); False plots raw eigenvalues.
    The format follows the suffix of ``path`` (.png or .svg). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(report.layers.values())
    has_beh = report.behavioural_spectrum is not None
    n = len(panels) + (1 if has_beh else 0)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    def scaled(spec, scale):
        return None if spec is None else np.asarray(spec) * (scale if loss_units else 1.0)

    def draw(ax, spec, scale, label, style, floor):
        y = scaled(spec, scale)
        if y is None or len(y) == 0:
            return
        # exact zeros (and float noise far below ε) are drawn on the axis floor
        ax.semilogy(np.arange(1, len(y) + 1), np.maximum(y, floor), style, label=label, ms=3)

    def floor_of(*specs):
        tops = [float(np.max(s)) for s in specs if s is not None and len(s) and np.max(s) > 0]
        top = max(tops, default=1.0)
        low = min(top * 1e-20, report.epsilon * 1e-3) if report.epsilon > 0 else top * 1e-20
        return max(low, 1e-300)

    for ax, ld in zip(axes.flat, panels):
        fl = floor_of(scaled(ld.spectrum_G, ld.scale_G), scaled(ld.spectrum_M, ld.scale_M),
                      scaled(ld.spectrum_J, ld.scale_J))
        draw(ax, ld.spectrum_G, ld.scale_G, f"G (rank {ld.rank_G})", "o-", fl)
        draw(ax, ld.spectrum_M, ld.scale_M, f"M (rank {ld.rank_M})", "s-", fl)
        draw(ax, ld.spectrum_J, ld.scale_J, f"J (rank {ld.rank_J})", "^-", fl)
        ax.set_ylim(bottom=fl / 3)
        if loss_units and report.epsilon > 0:
            ax.axhline(report.epsilon, color="k", ls="--", lw=0.8, label=f"ε = {report.epsilon:g}")
        ax.set_title(f"{ld.name} (d={ld.dim}, n_free={ld.n_free})", fontsize=9)
        ax.set_xlabel("index")
        ax.legend(fontsize=7)
    if has_beh:
        ax = axes.flat[len(panels)]
        fl = floor_of(report.behavioural_spectrum)
        draw(ax, report.behavioural_spectrum, 1.0, f"H/2 (rank {report.behavioural_rank})", ".-", fl)
        ax.set_ylim(bottom=fl / 3)
        if report.epsilon > 0:
            ax.axhline(report.epsilon, color="k", ls="--", lw=0.8)
        ax.set_title(f"behavioural Hessian (P={report.n_params})", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("eigenvalues in loss units" if loss_units else "raw eigenvalues", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
