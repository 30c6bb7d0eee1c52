"""Transformers: node layers with a position axis, attention, LayerNorm, padding, Hugging Face.

The reference for G, M and E is a per-sample, per-position loop written here from the
maths of docs/design.md §1 and docs/transformers.md, independent of intermod's code: a tiny
pre-LN transformer (2 positions, d = 4) is re-implemented functionally with every bias
term added at position s multiplied by that position's bias slot, and Jacobians are taken
one sample at a time with ``torch.autograd.functional.jacobian``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from torch import nn
from torch.autograd.functional import jacobian

D, P, D_MLP, D_OUT = 4, 2, 6, 3
LAYERS = ["blocks.0", "blocks.1", "head", "output"]
F64 = torch.float64  # explicit, so that weights do not depend on torch's default dtype
QUIET = {"progress": False, "device": "cpu", "dtype": torch.float64}


# --------------------------------------------------------------------------- tiny model


class TinyAttention(nn.Module):
    """Single-head attention; ``identity=True`` makes every position attend to itself."""

    def __init__(self, d: int, identity: bool = False) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, dtype=F64) for _ in range(4))
        self.identity = identity

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(h) @ self.k(h).transpose(-1, -2) / math.sqrt(h.shape[-1])
        allowed = mask[:, None, :].expand_as(scores)
        if self.identity:
            allowed = torch.eye(h.shape[1], dtype=torch.bool).expand_as(scores)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return self.o(torch.softmax(scores, dim=-1) @ self.v(h))


class TinyBlock(nn.Module):
    """x ↦ x + attn(LN₁ x); x ↦ x + W₂ gelu(W₁ LN₂ x + b₁) + b₂, with optional linear maps
    ``pre`` (applied first) and ``post`` (applied last) used by the invariance test."""

    def __init__(self, identity: bool = False) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D, dtype=F64), nn.LayerNorm(D, dtype=F64)
        self.attn = TinyAttention(D, identity)
        self.fc1, self.fc2 = nn.Linear(D, D_MLP, dtype=F64), nn.Linear(D_MLP, D, dtype=F64)
        self.pre: nn.Module = nn.Identity()
        self.post: nn.Module = nn.Identity()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.pre(hidden_states)
        x = x + self.attn(self.ln1(x), attention_mask)
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))
        return self.post(x)


class TinyTransformer(nn.Module):
    """(B, P, D) float inputs ``inputs_embeds`` (+ optional ``attention_mask`` (B, P)) →
    (B, P, D_OUT). Node layers: ``blocks.0`` (input), ``blocks.1`` (residual), ``head``
    (residual), ``output``."""

    def __init__(self, seed: int = 0, identity: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([TinyBlock(identity) for _ in range(2)])
        self.head = nn.Linear(D, D_OUT, dtype=F64)
        with torch.no_grad():  # non-trivial LayerNorm affine maps and biases
            for p in self.parameters():
                p.add_(0.3 * torch.randn_like(p))
        self.eval()

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = (
            torch.ones(inputs_embeds.shape[:2], dtype=torch.bool)
            if attention_mask is None
            else attention_mask.bool()
        )
        x = inputs_embeds
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


# ------------------------------------------------------ reference, one sample at a time


def _linear(lin: nn.Linear, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """x (P, a) ↦ x Wᵀ + slot_s b at each position s."""
    return x @ lin.weight.T + slot[:, None] * lin.bias


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + slot[:, None] * ln.bias


def ref_block(blk: TinyBlock, x: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor):
    """One sample: x (P, D), bias slot (P,), mask (P,) bool → (P, D)."""
    if isinstance(blk.pre, nn.Linear):
        x = x @ blk.pre.weight.T
    h = _layer_norm(blk.ln1, x, slot)
    q, k, v = (_linear(m, h, slot) for m in (blk.attn.q, blk.attn.k, blk.attn.v))
    scores = q @ k.T / math.sqrt(D)
    allowed = torch.eye(len(x), dtype=torch.bool) if blk.attn.identity else mask[None, :]
    scores = scores.masked_fill(~allowed.expand_as(scores), float("-inf"))
    x = x + _linear(blk.attn.o, torch.softmax(scores, -1) @ v, slot)
    h = nn.functional.gelu(_linear(blk.fc1, _layer_norm(blk.ln2, x, slot), slot))
    x = x + _linear(blk.fc2, h, slot)
    if isinstance(blk.post, nn.Linear):
        x = x @ blk.post.weight.T
    return x


def ref_section(model: TinyTransformer, l: int, f, slot, mask):
    """Section l of LAYERS (node layer l → l+1) for one sample, biases scaled by slot."""
    if l < 2:
        return ref_block(model.blocks[l], f, slot, mask)
    return _linear(model.head, f, slot)


def ref_rest(model, l: int, f, slot, mask):
    """Output (P, D_OUT) as a function of node layer l with its slot. The slot passes
    through every section (App. A's [[W, b], [0, 1]]: the slot of position t at layer l+1 is
    that of position t at layer l), so it scales the biases of all later sections too."""
    out = f
    for m in range(l, len(LAYERS) - 1):
        out = ref_section(model, m, out, slot, mask)
    return out


def ref_activations(model, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Activations of every node layer for every sample: list of (B, P, d_l)."""
    acts = [x]
    for l in range(len(LAYERS) - 1):
        acts.append(
            torch.stack(
                [
                    ref_section(model, l, acts[-1][b], torch.ones(x.shape[1], dtype=x.dtype), mask[b])
                    for b in range(len(x))
                ]
            )
        )
    return acts


def aug(f: torch.Tensor) -> torch.Tensor:
    """Append the bias slot: (..., d) → (..., d + 1)."""
    return torch.cat([f, torch.ones(*f.shape[:-1], 1, dtype=f.dtype)], -1)


def ref_aug_section(model, l: int, fa: torch.Tensor, mask_b) -> torch.Tensor:
    """The augmented section (P, d_l + 1) → (P, d_{l+1} + 1): the slot passes through, as in
    App. A's augmented weights [[W, b], [0, 1]] (the constant direction maps to itself)."""
    d = fa.shape[-1] - 1
    return torch.cat([ref_section(model, l, fa[:, :d], fa[:, d], mask_b), fa[:, d:]], -1)


def ref_G(f: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Centred Gram over valid (sample, position) pairs, bias slot last."""
    rows = f[mask]
    rows = torch.cat([rows - rows.mean(0), torch.ones(len(rows), 1, dtype=f.dtype)], 1)
    return (rows.T @ rows / len(rows)).numpy()


def ref_M_output(model, l: int, acts, mask) -> np.ndarray:
    """(1/N) Σ_x Σ_s Σ_(t,k) (∂y_tk/∂f_s)(∂y_tk/∂f_s)ᵀ over valid s and t (f with slot)."""
    d = acts[l].shape[-1]
    M = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    for b in range(len(acts[l])):
        def y(fa, b=b):
            return ref_rest(model, l, fa[:, :d], fa[:, d], mask[b])

        J = jacobian(y, aug(acts[l][b]))
        J = J[mask[b]][:, :, mask[b]]  # (t, k, s, d+1), valid t and s
        M += torch.einsum("tksa,tksb->ab", J, J)
    return (M / mask.sum()).numpy()


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def ref_hat_section(model, l: int, basis, f_aug: torch.Tensor, mask_b):
    """f̂^{l+1} (P, k') as a function of f̂^l (P, k) for one sample, via the inverse map."""
    lb, lb1 = basis[LAYERS[l]], basis[LAYERS[l + 1]]

    def hat(fhat):
        fa = fhat @ _t(lb.Cinv).T
        return ref_aug_section(model, l, fa, mask_b) @ _t(lb1.C)

    return hat, f_aug @ _t(lb.C)


def ref_M_next(model, l: int, basis, acts, mask) -> np.ndarray:
    """Next-layer target: y = f̂^{l+1} at every valid position."""
    d = acts[l].shape[-1]
    C1 = _t(basis[LAYERS[l + 1]].C)
    M = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    for b in range(len(acts[l])):
        def y(fa, b=b):
            return ref_aug_section(model, l, fa, mask[b]) @ C1

        J = jacobian(y, aug(acts[l][b]))[mask[b]][:, :, mask[b]]
        M += torch.einsum("tksa,tksb->ab", J, J)
    return (M / mask.sum()).numpy()


def ref_E(model, l: int, basis, acts, mask) -> np.ndarray:
    """E_ij = (1/N) Σ_x Σ_t (Σ_s ∂f̂_{t,i}/∂f̂_{s,j} f̂_{s,j})², valid s and t."""
    E = 0.0
    for b in range(len(acts[l])):
        hat, fhat = ref_hat_section(model, l, basis, aug(acts[l][b]), mask[b])
        J = jacobian(hat, fhat)  # (P, k', P, k)
        A = torch.einsum("tisj,sj->tij", J[:, :, mask[b]], fhat[mask[b]])
        E = E + (A[mask[b]] ** 2).sum(0)
    return (E / mask.sum()).numpy()


# ------------------------------------------------------------------------------ fixtures

def make_inputs(n: int = 16, seed: int = 1, pad: int = 0, ragged: bool = False):
    """n samples of P valid positions, then ``pad`` padded positions (random values, mask 0).
    ``ragged``: every third sample has its last valid position masked too."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, P + pad, D, generator=gen, dtype=torch.float64)
    mask = torch.zeros(n, P + pad, dtype=torch.long)
    mask[:, :P] = 1
    if ragged:
        mask[::3, P - 1] = 0
    return {"inputs_embeds": x, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny():
    return TinyTransformer(seed=0)


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "ragged"])
def exact(request, tiny):
    """Inputs (dense, or ragged with a padded position), mask, exact basis, reference acts."""
    inputs = make_inputs(pad=int(request.param), ragged=request.param)
    mask = inputs["attention_mask"].bool()
    basis = ia.compute_basis(tiny, inputs, LAYERS, **QUIET)
    with torch.no_grad():
        acts = ref_activations(tiny, inputs["inputs_embeds"], mask)
    return inputs, mask, basis, acts


def edge_E(graph, src: str, dst: str) -> np.ndarray:
    return np.asarray(graph.edge_matrix(src, dst)) ** 2


def assert_M_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * np.abs(want).max())


# ------------------------------------------------------------------- brute-force checks


def test_reference_model_matches_module(tiny):
    """The functional reference is the same network as the nn.Module."""
    inputs = make_inputs(n=5, pad=1, ragged=True)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        out = tiny(**inputs)
        acts = ref_activations(tiny, inputs["inputs_embeds"], mask)
    torch.testing.assert_close(acts[-1][mask], out[mask], rtol=1e-12, atol=1e-12)


def test_samples_are_valid_positions(exact):
    _, mask, basis, _ = exact
    assert basis.n_samples == int(mask.sum())


@pytest.mark.parametrize("l", range(len(LAYERS)))
def test_G_matches_loop(exact, l):
    _, mask, basis, acts = exact
    np.testing.assert_allclose(basis[LAYERS[l]].G, ref_G(acts[l], mask), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("l", range(len(LAYERS) - 1))
def test_M_output_target_matches_loop(exact, tiny, l):
    """The whole M, bias-slot row included: slot_s scales the biases added at position s,
    the value and key biases of key position s included (LIB's folded biases)."""
    _, mask, basis, acts = exact
    assert_M_close(basis[LAYERS[l]].M, ref_M_output(tiny, l, acts, mask))


def test_M_identity_attention_bias_slot_matches_loop():
    """With attention the identity on positions, per-position bias conventions agree: the
    whole M, bias-slot row included, equals the loop at every layer."""
    model = TinyTransformer(seed=2, identity=True)
    inputs = make_inputs(pad=1, ragged=True)
    mask = inputs["attention_mask"].bool()
    basis = ia.compute_basis(model, inputs, LAYERS, **QUIET)
    with torch.no_grad():
        acts = ref_activations(model, inputs["inputs_embeds"], mask)
    for l in range(len(LAYERS) - 1):
        assert_M_close(basis[LAYERS[l]].M, ref_M_output(model, l, acts, mask))


def test_M_next_layer_target_matches_loop(exact, tiny):
    inputs, mask, _, acts = exact
    basis = ia.compute_basis(tiny, inputs, LAYERS, jacobian_target="next_layer", **QUIET)
    for l in range(len(LAYERS) - 1):
        assert_M_close(basis[LAYERS[l]].M, ref_M_next(tiny, l, basis, acts, mask))


def test_edges_match_loop(exact, tiny):
    inputs, mask, basis, acts = exact
    graph = ia.build_graph(tiny, inputs, basis, **QUIET)
    for l in range(len(LAYERS) - 1):
        np.testing.assert_allclose(
            edge_E(graph, LAYERS[l], LAYERS[l + 1]),
            ref_E(tiny, l, basis, acts, mask),
            rtol=1e-8,
            atol=1e-12,
        )


# ------------------------------------------------------------------------------- probes


def _assert_unbiased(samples: list[np.ndarray], exact: np.ndarray) -> None:
    """The mean of independent unbiased estimates lies within 5 standard errors of the
    exact value (entrywise), and the estimates really are random."""
    s = np.stack(samples)
    sem = s.std(0, ddof=1) / math.sqrt(len(s))
    assert np.all(np.abs(s.mean(0) - exact) <= 5 * sem + 1e-10 * np.abs(exact).max())
    assert not np.allclose(s[0], exact)


def test_M_probes_unbiased(tiny):
    """Random ±1 probes over (t, k): M averaged over probe seeds converges to the loop."""
    inputs = make_inputs(n=8)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        acts = ref_activations(tiny, inputs["inputs_embeds"], mask)
    runs = [
        ia.compute_basis(tiny, inputs, LAYERS, n_probes=2, seed=s, **QUIET) for s in range(40)
    ]
    for l in range(len(LAYERS) - 1):
        _assert_unbiased([r[LAYERS[l]].M for r in runs], ref_M_output(tiny, l, acts, mask))


def test_edge_probes_unbiased(tiny):
    """Probes over output positions t: E averaged over probe seeds converges to the loop."""
    inputs = make_inputs(n=8)
    mask = inputs["attention_mask"].bool()
    basis = ia.compute_basis(tiny, inputs, LAYERS, **QUIET)
    with torch.no_grad():
        acts = ref_activations(tiny, inputs["inputs_embeds"], mask)
    runs = [ia.build_graph(tiny, inputs, basis, n_probes=1, seed=s, **QUIET) for s in range(40)]
    for l in range(len(LAYERS) - 1):
        _assert_unbiased(
            [edge_E(g, LAYERS[l], LAYERS[l + 1]) for g in runs], ref_E(tiny, l, basis, acts, mask)
        )


# ---------------------------------------------------------------- invariance, sanity


@pytest.fixture(scope="module")
def rotated_pair():
    """The same network twice, the second with the residual stream ``blocks.1`` replaced by
    R f and block 1 reading R⁻¹ f (§6.2); bases of both on the same inputs. R is a general
    invertible (non-orthogonal) map with condition number 6, so float64 rounding stays far
    below the 1e-8 tolerance (a random R near-singular would amplify it by cond(R)²)."""
    inputs = make_inputs(n=32)
    base = TinyTransformer(seed=3)
    rotated = TinyTransformer(seed=3)
    gen = torch.Generator().manual_seed(7)
    Q1, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=F64))
    Q2, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=F64))
    R = Q1 @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)) @ Q2  # invertible, cond 6
    rotated.blocks[0].post = nn.Linear(D, D, bias=False, dtype=F64)
    rotated.blocks[1].pre = nn.Linear(D, D, bias=False, dtype=F64)
    with torch.no_grad():
        rotated.blocks[0].post.weight.copy_(R)
        rotated.blocks[1].pre.weight.copy_(torch.linalg.inv(R))
    models = (base, rotated)
    return inputs, models, [ia.compute_basis(m, inputs, LAYERS, **QUIET) for m in models]


def test_invariance_residual_stream_basis(rotated_pair):
    """§6.2: Λ and |f̂| at the rotated node layer, and every other layer's basis, agree."""
    inputs, models, (b0, b1) = rotated_pair
    f = []
    for model in models:
        with torch.no_grad():
            f.append(model.blocks[0](inputs["inputs_embeds"], inputs["attention_mask"].bool()))
    for name in LAYERS:
        np.testing.assert_allclose(b1[name].Lambda, b0[name].Lambda, rtol=1e-8)
    h0, h1 = b0["blocks.1"].transform(f[0]), b1["blocks.1"].transform(f[1])
    np.testing.assert_allclose(np.abs(h1), np.abs(h0), rtol=1e-7, atol=1e-9 * np.abs(h0).max())


def test_invariance_residual_stream_edges(rotated_pair):
    inputs, models, bases = rotated_pair
    g0, g1 = (ia.build_graph(m, inputs, b, **QUIET) for m, b in zip(models, bases))
    for src, dst in itertools.pairwise(LAYERS):
        w0, w1 = g0.edge_matrix(src, dst), g1.edge_matrix(src, dst)
        np.testing.assert_allclose(w1, w0, rtol=1e-7, atol=1e-9 * np.max(w0))


class _MLPBlock(nn.Module):
    """A TinyBlock with identity attention, on (N, D): attention reduces to W_O W_V."""

    def __init__(self, blk: TinyBlock) -> None:
        super().__init__()
        self.blk = blk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blk
        x = x + b.attn.o(b.attn.v(b.ln1(x)))
        return x + b.fc2(nn.functional.gelu(b.fc1(b.ln2(x))))


class PositionwiseMLP(nn.Module):
    """The identity-attention TinyTransformer with positions flattened into samples:
    (N, D) → (N, D_OUT), same parameters, same module paths."""

    def __init__(self, tiny: TinyTransformer) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_MLPBlock(b) for b in tiny.blocks])
        self.head = tiny.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.fixture(scope="module")
def identity_pair():
    tiny = TinyTransformer(seed=5, identity=True)
    x = make_inputs(n=20)["inputs_embeds"]
    mlp = PositionwiseMLP(tiny)
    flat = x.reshape(-1, D)
    pairs = ((tiny, x), (mlp, flat))
    return pairs, [ia.compute_basis(m, inp, LAYERS, **QUIET) for m, inp in pairs]


def assert_same_basis(a, b, rtol):
    """G (atol 1e-12), M and Λ (relative ``rtol``) of every node layer agree."""
    for name in LAYERS:
        np.testing.assert_allclose(a[name].G, b[name].G, atol=1e-12)
        np.testing.assert_allclose(a[name].M, b[name].M, rtol=rtol, atol=1e-12)
        np.testing.assert_allclose(a[name].Lambda, b[name].Lambda, rtol=rtol)


def test_identity_attention_equals_positionwise_mlp_basis(identity_pair):
    """Attention = identity on positions: the same G, M and Λ as an MLP whose samples are
    the (input, position) pairs (and the same sample count, n·P)."""
    _, (bt, bm) = identity_pair
    assert bt.n_samples == bm.n_samples == 20 * P
    assert_same_basis(bt, bm, rtol=1e-9)


def test_identity_attention_equals_positionwise_mlp_edges(identity_pair):
    pairs, bases = identity_pair
    gt, gm = (ia.build_graph(m, inp, b, **QUIET) for (m, inp), b in zip(pairs, bases))
    for src, dst in itertools.pairwise(LAYERS):
        np.testing.assert_allclose(
            gt.edge_matrix(src, dst), gm.edge_matrix(src, dst), rtol=1e-8, atol=1e-12
        )


@pytest.fixture(scope="module")
def padded_pair(tiny):
    """The same 16 inputs without and with 3 padded positions (mask 0, random values)."""
    plain = make_inputs(n=16, seed=4)
    padded = make_inputs(n=16, seed=4, pad=3)
    padded["inputs_embeds"][:, :P] = plain["inputs_embeds"]
    pair = (plain, padded)
    return pair, [ia.compute_basis(tiny, inputs, LAYERS, **QUIET) for inputs in pair]


def test_padding_changes_nothing_basis(padded_pair):
    _, (b0, b1) = padded_pair
    assert b0.n_samples == b1.n_samples == 16 * P
    assert_same_basis(b1, b0, rtol=1e-10)


def test_padding_changes_nothing_edges(tiny, padded_pair):
    pair, bases = padded_pair
    g0, g1 = (ia.build_graph(tiny, inputs, b, **QUIET) for inputs, b in zip(pair, bases))
    np.testing.assert_allclose(g1.w, g0.w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_padding_changes_no_probe_draw_basis(tiny, padded_pair, target):
    """Probes are keyed by (seed, sample, valid position): padded and unpadded runs draw the
    same signs at every valid position, so Λ agrees to round-off, not just in expectation."""
    pair, _ = padded_pair
    b0, b1 = (ia.compute_basis(tiny, inputs, LAYERS, n_probes=3, seed=7, jacobian_target=target, **QUIET)
              for inputs in pair)
    exact = ia.compute_basis(tiny, pair[0], LAYERS, jacobian_target=target, **QUIET)
    for name in LAYERS:
        np.testing.assert_allclose(b1[name].M, b0[name].M, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b1[name].Lambda, b0[name].Lambda, rtol=1e-10)
    assert not np.allclose(b0[LAYERS[0]].M, exact[LAYERS[0]].M, rtol=1e-3)   # probes, not exact


def test_probe_draws_do_not_depend_on_batching_or_left_padding(tiny, padded_pair):
    """Batch size 5 vs 16 and padding on the left instead of the right: the same probe draws."""
    (plain, padded), _ = padded_pair
    left = {k: v.roll(3, dims=1) for k, v in padded.items()}
    runs = [ia.compute_basis(tiny, plain, LAYERS, n_probes=2, seed=3, **QUIET),
            ia.compute_basis(tiny, plain, LAYERS, n_probes=2, seed=3, batch_size=5, **QUIET)]
    graphs = [ia.build_graph(tiny, inputs, runs[0], n_probes=2, seed=3, **QUIET) for inputs in (plain, padded)]
    np.testing.assert_allclose(runs[1][LAYERS[0]].M, runs[0][LAYERS[0]].M, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(graphs[1].w, graphs[0].w, rtol=1e-9, atol=1e-12)
    from intermod.analysis.core.jacobians import ProbeDraw, probe_signs
    m_right, m_left = padded["attention_mask"].bool(), left["attention_mask"].bool()
    s_right = probe_signs(ProbeDraw(3, 0, 0), m_right, range(4), 5)
    s_left = probe_signs(ProbeDraw(3, 0, 0), m_left, range(4), 5)
    assert torch.equal(s_right[:, m_right], s_left[:, m_left])
    assert set(s_right.unique().tolist()) == {-1, 1}
    assert not torch.equal(s_right, probe_signs(ProbeDraw(4, 0, 0), m_right, range(4), 5))
