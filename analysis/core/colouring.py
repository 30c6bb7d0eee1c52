"""Coloured cotangents: one backward pass for many output positions of a local section.

Exact per-position Jacobians of a section between conv maps take one cotangent per output
position t and direction i: P_out·k' backward passes, each over every position, so the cost
grows with the square of the map's size. A section that acts *locally* — output position t
depends only on the input positions RF(t), its receptive field, as convolutions (any kernel,
stride, padding, dilation), pooling, batch norm and elementwise activations do — needs far
fewer: if RF(t) and RF(t') are disjoint, the backward pass of e_i ⊗ (e_t + e_t') puts t's
gradient on RF(t) and t''s on RF(t'), apart. The output positions are coloured (greedily,
:func:`greedy_colours`) so that the positions of one colour have pairwise disjoint receptive
fields, and cotangent (c, i) is e_i ⊗ [colour(t) = c]: about ⌈r/S⌉ colours per spatial axis
(receptive field r, stride S), whatever the map's size. Input position s of its gradient
belongs to its owner o_c(s), the one t of colour c with s ∈ RF(t) (none: the gradient is 0
there), so every per-(t, i) quantity is recovered exactly: a Gram over s needs nothing more,
and a sum over s per t is a scatter by owner (:func:`to_owner`).

Receptive fields (:func:`position_dependency`) come from a structural pass: one-hot maps of the
input positions through the section with every convolution's kernel replaced by ones (same
stride, padding, dilation and padding mode), pooling applied as it is and pointwise modules
skipped. Every term is ≥ 0, so an output is > 0 exactly where it may depend on the input:
D ⊇ the Jacobian's support for any weights and any point. Unknown modules, transposed
convolutions and models that are not an ``nn.Sequential`` cut at its children take the plain
cotangents.

Bias slot (docs/models.md). The slot derivative of cotangent (t, i) at input position s is

    ℓ_{t,i}(s) + ŵ_s γ_{t,i}

with ŵ_s the share of s in the mean slot s̄ = Σ_s ŵ_s s_s. ℓ is *local* (supported on RF(t), which
the structural pass widens to cover it): biases at modules that keep the input's positions,
each driven by its own position's slot, and, when the section keeps the positions, the next
layer's slot and the other biases at t. γ is *global*: the biases after a change of positions,
driven by s̄, γ^hook_{t,i} = ⟨C_i, ∂f_t/∂s̄⟩ (one forward-mode pass for every t,
:meth:`~intermod.analysis.core.nodes.NodeModel.mean_slot_tangent`), and, when the positions
change, the next slot and the other biases, c_slot,i + ⟨C_i, β_t⟩. The coloured VJP returns
ℓ_{o(s)}(s) + ŵ_s Σ_{t∈c} γ^hook_t at s; :func:`split_slot` takes the mixed global part out and
keeps γ per t, so that

    A_{t,i,j} = Σ_{s: o(s)=t} (g(s)·Q_j + ℓ(s) Q_slot,j) f̂_{s,j} + γ_{t,i} Q_slot,j Σ_s ŵ_s f̂_{s,j}

for the edges, and the Jacobian-Gram rows are (g(s), ℓ(s) + ŵ_s γ_{o(s)}) plus the slot–slot
term ŵ_s² Σ_{t: s∉RF(t)} γ_t² that no colour carries (:func:`missing_slot_square`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .jacobians import chunk_size
from .nodes import OUTPUT, NodeModel, default_output
from .sequence import Residual
from .structured import ELEMENTWISE

POINTWISE = ELEMENTWISE + (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout, nn.Dropout1d,
                           nn.Dropout2d, nn.Dropout3d)
POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
         nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
PROBE_CHUNK = 256   # one-hot input maps per structural pass


@dataclass(frozen=True)
class Colouring:
    """Output positions of a local section coloured for disjoint receptive fields.

    colour: (P_out,) the colour of each output position; owner: (n_colours, P_in) the output
    position of each colour that reads input position s, P_out where none does;
    pairs: (t, s) index tensors of the dependency D (t may depend on s), nnz each;
    keeps_positions: P_in = P_out (the next slot at t is the slot of t, :func:`spread_slot`);
    mean_hooks: some hooked bias of the section is driven by the mean slot.
    """

    colour: Tensor
    owner: Tensor
    pairs: tuple[Tensor, Tensor]
    keeps_positions: bool
    mean_hooks: bool

    @property
    def n_colours(self) -> int:
        return int(self.owner.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.colour.shape[0])


def _structural(m: nn.Module, x: Tensor) -> Tensor | None:
    """``m``'s dependency map: x (N, 1, *spatial) ≥ 0 -> (N, 1, *spatial'), > 0 where an output
    position may depend on a position where x > 0; None for a module that is not known to be
    local."""
    if isinstance(m, POINTWISE):
        return x
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        ones = type(m)(1, 1, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                       bias=False, padding_mode=m.padding_mode, dtype=x.dtype)
        with torch.no_grad():
            ones.weight.fill_(1.0)
            return ones(x)
    if isinstance(m, POOLS) and not getattr(m, "return_indices", False):
        with torch.no_grad():
            return m(x)
    return None


def _flat(modules: list[nn.Module]) -> Iterator[nn.Module]:
    """The modules in the order they run, nested ``nn.Sequential`` containers opened."""
    for m in modules:
        if isinstance(m, nn.Sequential):
            yield from _flat(list(m))
        else:
            yield m


def _through(modules: list[nn.Module], x: Tensor, onehot: Tensor, hooked: Callable[[nn.Module], bool],
             include_bias: bool) -> tuple[Tensor, bool] | None:
    """x's dependency map through ``modules`` (a residual unit: its body's plus its shortcut's), and
    whether a hooked bias sat where the positions differ from the section input's (``onehot``)."""
    mean_hooks = False
    for m in modules:
        if isinstance(m, Residual):
            body = _through(list(_flat(list(m.body))), x, onehot, hooked, include_bias)
            short = _through(list(_flat(list(m.shortcut))), x, onehot, hooked, include_bias)
            if body is None or short is None or body[0].shape != short[0].shape:
                return None
            x, mean_hooks = body[0] + short[0], mean_hooks or body[1] or short[1]
            continue
        x = _structural(m, x)
        if x is None:
            return None
        if include_bias and hooked(m):
            if x.shape[2:] == onehot.shape[2:]:
                x = x + onehot
            else:
                mean_hooks = True
    return x, mean_hooks


def position_dependency(modules: list[nn.Module], spatial: tuple[int, ...],
                        hooked: Callable[[nn.Module], bool], include_bias: bool
                        ) -> tuple[sp.csr_matrix, bool] | None:
    """(D (P_out, P_in) 0/1, mean_hooks) for a section of ``modules`` on maps of ``spatial``
    positions, or None when a module is not known to be local (module docstring). With the
    slot, a hooked bias at positions equal to the input's adds its position's slot (as an
    input at that position would), and when P_out = P_in the next slot at t depends on s = t;
    ``mean_hooks``: a hooked bias sits where the positions differ (it is driven by s̄)."""
    modules = list(_flat(modules))
    P_in = math.prod(spatial)
    ts, ss, mean_hooks, P_out = [], [], False, None
    for start in range(0, P_in, PROBE_CHUNK):
        n = min(PROBE_CHUNK, P_in - start)
        onehot = torch.zeros(n, P_in, dtype=torch.float64)
        onehot[torch.arange(n), torch.arange(start, start + n)] = 1.0
        onehot = onehot.reshape((n, 1) + spatial)
        found = _through(modules, onehot, onehot, hooked, include_bias)
        if found is None:
            return None
        x, hooks = found
        mean_hooks |= hooks
        flat = x.reshape(n, -1)
        P_out = flat.shape[1]
        if include_bias and P_out == P_in:
            flat = flat + onehot.reshape(n, P_in)
        s, t = (flat > 0).nonzero(as_tuple=True)
        ts.append(t.numpy())
        ss.append(s.numpy() + start)
    t, s = np.concatenate(ts), np.concatenate(ss)
    D = sp.csr_matrix((np.ones(len(t)), (t, s)), shape=(P_out, P_in))
    return D, mean_hooks


def greedy_colours(D: sp.csr_matrix) -> np.ndarray:
    """(P_out,) colours such that two positions of one colour never depend on a common input
    position: each position in raster order takes the smallest colour none of its conflicts
    (rows of D Dᵀ) has taken."""
    N = (D @ D.T).tocsr()
    colour = np.full(D.shape[0], -1, dtype=np.int64)
    for t in range(D.shape[0]):
        near = colour[N.indices[N.indptr[t]:N.indptr[t + 1]]]
        taken = np.zeros(len(near) + 1, dtype=bool)
        taken[near[(near >= 0) & (near < len(taken))]] = True
        colour[t] = int(np.argmin(taken))
    return colour


def section_colouring(net: NodeModel, j: int, in_shape: tuple[int, ...], device: torch.device
                      ) -> Colouring | None:
    """The colouring of section j for inputs of ``in_shape`` (B, C, *spatial), or None when it
    does not apply (not two conv maps, a module not known to be local, a non-default output
    function at the output) or saves nothing (as many colours as output positions)."""
    src, dst = net.chain[j], net.chain[j + 1]
    modules = net.section_modules(j)
    if (modules is None or len(in_shape) < 3 or any(net.layouts[n].kind != "channels" for n in (src, dst))
            or dst == OUTPUT and net.output_fn is not default_output):
        return None
    found = position_dependency(modules, tuple(in_shape[2:]), net.slot_hooked, net.include_bias)
    if found is None:
        return None
    return dependency_colouring(*found, device)


def dependency_colouring(D: sp.csr_matrix, mean_hooks: bool, device: torch.device) -> Colouring | None:
    """The colouring of the output positions of a dependency D (P_out, P_in)
    (:func:`position_dependency`), or None when it saves nothing (as many colours as positions)."""
    colour = greedy_colours(D)
    n_colours = int(colour.max()) + 1
    if n_colours >= D.shape[0]:
        return None
    t, s = D.nonzero()
    owner = np.full((n_colours, D.shape[1]), D.shape[0], dtype=np.int64)
    owner[colour[t], s] = t
    as_t = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)   # noqa: E731
    return Colouring(as_t(colour), as_t(owner), (as_t(t), as_t(s)), D.shape[0] == D.shape[1], mean_hooks)


def coloured_cotangents(col: Colouring, mask: Tensor, k: int, dtype: torch.dtype, per_item: int,
                        max_memory: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(pattern (K, B, P_out), which_i (K,), colour (K,)): cotangent K is e_{which_i} ⊗ pattern,
    the pattern of a colour the mask (B, P_out) at its positions only."""
    n = col.n_colours
    own = col.colour[None, :] == torch.arange(n, device=mask.device)[:, None]       # (n, P_out)
    patterns = own.to(dtype)[:, None, :] * mask.to(dtype)[None]
    total = n * k
    step = chunk_size(total, per_item, dtype, max_memory, mask.device)
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total), device=mask.device)
        yield patterns[idx // k], idx % k, idx // k


def split_slot(col: Colouring, slot_grad: Tensor, pattern: Tensor, which: Tensor, hook: Tensor | None,
               down: Tensor | None, share: Tensor) -> tuple[Tensor, Tensor]:
    """(ℓ (K, B, P_in), γ (K, B, P_out)): the local and global slot derivatives of the coloured
    cotangents (module docstring). slot_grad: the VJP's gradient at the slot leaf (K, B, P_in);
    hook, down: (B, P_out, k') tables ⟨C_i, ∂f_t/∂s̄⟩ and c_slot,i + ⟨C_i, β_t⟩ (None: zero);
    share: (B, P_in) the mean slot's ŵ."""
    loc = slot_grad
    gamma = torch.zeros_like(pattern)
    if hook is not None:
        h = pattern * hook[..., which].permute(2, 0, 1)
        loc = loc - share[None] * h.sum(-1, keepdim=True)
        gamma = gamma + h
    if down is not None:
        dn = pattern * down[..., which].permute(2, 0, 1)
        if col.keeps_positions:
            loc = loc + dn
        else:
            gamma = gamma + dn
    return loc, gamma


def at_owner(col: Colouring, values: Tensor, colour: Tensor) -> Tensor:
    """values (K, B, P_out) read at each input position's owner: (K, B, P_in), 0 where none."""
    K, B, _ = values.shape
    padded = torch.cat([values, values.new_zeros(K, B, 1)], -1)
    return padded.gather(2, col.owner[colour][:, None, :].expand(K, B, -1))


def to_owner(col: Colouring, values: Tensor, colour: Tensor) -> Tensor:
    """values (K, B, P_in, k) summed over the input positions each output position owns:
    (K, B, P_out, k)."""
    K, B, _, k = values.shape
    out = values.new_zeros(K, B, col.n_out + 1, k)
    out.scatter_add_(2, col.owner[colour][:, None, :, None].expand_as(values), values)
    return out[:, :, :col.n_out]


def missing_slot_square(col: Colouring, gamma_sq: Tensor, share: Tensor, w_in: Tensor) -> float:
    """Σ_b Σ_s w_s ŵ_s² Σ_{t: s ∉ RF(t)} Γ_{b,t}, with Γ = Σ_i γ_{t,i}² (B, P_out): the slot–slot
    entry of the Jacobian Gram that the coloured rows leave out (module docstring)."""
    t, s = col.pairs
    inside = torch.zeros_like(share).index_add_(1, s, gamma_sq[:, t])           # Σ_{t: s∈RF(t)}
    outside = gamma_sq.sum(1, keepdim=True) - inside
    return float((w_in * share.square() * outside).sum())
