"""Convolutional networks: G, M and edges of a small CNN against a per-sample brute force.

The reference re-implements the CNN functionally, section by section, from the maths of
docs/design.md §1 and the bias attribution of docs/models.md, independent of intermod's code:
a conv map (C, H, W) is C features at H·W positions, every bias added at the positions of
the section's input is multiplied by that position's slot, and where the positions change
(max-pooling, flatten) the next layer's slot and every bias after the change are the mean
slot. Jacobians are taken one sample at a time with ``torch.autograd.functional.jacobian``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from intermod import analysis as ia
from nets import pooled_cnn
from torch import nn
from torch.autograd.functional import jacobian

F64 = torch.float64
QUIET = {"progress": False, "device": "cpu", "dtype": F64}
LAYERS = ["relu1", "conv2", "relu2", "fc1", "output"]


def _cnn() -> nn.Sequential:
    model = pooled_cnn((1, 2, 3), flat=3, hidden=4, out=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _data(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)


# --------------------------------------------------------------------------- reference


def _sections(model: nn.Sequential):
    """Section l: (f_l, s_l) -> (f_{l+1}, s_{l+1}) for one sample; f a (C, H, W) map or a
    vector, s the slots of f's positions ((H, W) or a scalar)."""
    c2, fc1, fc2 = model.conv2, model.fc1, model.fc2

    def pool_relu(f, s):   # positions change: the next slot is the mean slot
        return F.max_pool2d(torch.relu(f)[None], 2)[0], s.mean() * torch.ones(f.shape[1] // 2, f.shape[2] // 2, dtype=F64)

    def conv(f, s):        # same positions: the bias at position p is scaled by s_p
        return F.conv2d(f[None], c2.weight, padding=1)[0] + c2.bias[:, None, None] * s, s

    def flatten(f, s):
        return F.max_pool2d(torch.relu(f)[None], 2)[0].reshape(-1), s.mean()

    def head(f, s):
        return fc2.weight @ torch.tanh(fc1.weight @ f + fc1.bias * s) + fc2.bias * s, s

    return [pool_relu, conv, flatten, head]


@torch.no_grad()
def _reference_acts(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    f = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)
    acts = [f]
    for sec in _sections(model):
        f = torch.stack([sec(fi, torch.ones(fi.shape[1:] if fi.ndim == 3 else (), dtype=F64))[0] for fi in f])
        acts.append(f)
    return acts


def _samples(t: torch.Tensor) -> torch.Tensor:
    """Activations (n, C, H, W) -> (n, H·W, C); (n, d) -> (n, 1, d)."""
    return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t[:, None, :]


def _aug(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One sample's (positions, d + 1): features then slot."""
    fs = f.flatten(1).T if f.ndim == 3 else f[None]
    return torch.cat([fs, s.reshape(-1, 1)], 1)


def _split(aug: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`_aug` for a sample shaped like ``like``."""
    f, s = aug[:, :-1], aug[:, -1]
    if like.ndim == 3:
        return f.T.reshape(like.shape), s.reshape(like.shape[1:])
    return f[0], s[0]


def _ones_slot(f: torch.Tensor) -> torch.Tensor:
    return torch.ones(f.shape[1:] if f.ndim == 3 else (), dtype=F64)


def _reference_M(model, acts, basis, l: int, target: str) -> np.ndarray:
    """M^l = (1/n_l) Σ_{x, p, k} ĝ ĝᵀ, ĝ = ∂y_k/∂(f_p, s_p) with y the output (all later
    sections) or f̂^{l+1} = C_{l+1}ᵀ (f^{l+1}, s^{l+1}) at every position (``"next_layer"``)."""
    secs = _sections(model)
    C_next = torch.as_tensor(basis[LAYERS[l + 1]].C)

    def y_of(fv, sv):
        if target == "next_layer":
            return _aug(*secs[l](fv, sv)) @ C_next          # (P', k')
        for sec in secs[l:]:
            fv, sv = sec(fv, sv)
        return fv                                           # (k,)

    total, count = 0.0, 0
    for f in acts[l]:
        Jf, Js = jacobian(y_of, (f, _ones_slot(f)))
        lead = Jf.shape[:Jf.ndim - f.ndim]
        Jf, Js = Jf.reshape((-1,) + f.shape), Js.reshape((-1,) + _ones_slot(f).shape)
        g = torch.stack([_aug(Jf[k], Js[k]) for k in range(Jf.shape[0])])   # (K, P, d+1)
        assert g.shape[0] == int(np.prod(lead))
        g = g.reshape(-1, g.shape[-1])
        total = total + g.T @ g
        count += _aug(f, _ones_slot(f)).shape[0]
    return (total / count).numpy()


def _reference_edges(model, acts, basis, l: int) -> np.ndarray:
    """w_ij = √(mean over (x, t) of (Σ_p ∂f̂^{l+1}_{t,i}/∂f̂^l_{p,j} · f̂^l_{p,j})²)."""
    sec = _sections(model)[l]
    C = torch.as_tensor(basis[LAYERS[l]].C)
    Cinv = torch.as_tensor(basis[LAYERS[l]].Cinv)
    C_next = torch.as_tensor(basis[LAYERS[l + 1]].C)
    total, count = 0.0, 0
    for f in acts[l]:
        f_hat = _aug(f, _ones_slot(f)) @ C                                  # (P, k)

        def out(fh, f=f):
            return _aug(*sec(*_split(fh @ Cinv.T, f))) @ C_next             # (P', k')

        J = jacobian(out, f_hat)                                            # (P', k', P, k)
        A = (J * f_hat[None, None]).sum(2)                                  # (P', k', k)
        total = total + (A ** 2).sum(0)
        count += A.shape[0]
    return np.sqrt((total / count).numpy())


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def cnn_case():
    model, x = _cnn(), _data()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x, _reference_acts(model, x)


def test_reference_forward_matches_the_model(cnn_case):
    model, x, acts = cnn_case
    torch.testing.assert_close(acts[-1], model(x), rtol=1e-12, atol=1e-12)


def test_conv_layouts_are_channels_at_positions(cnn_case):
    model, x, _ = cnn_case
    basis = ia.compute_basis(model, x, LAYERS, **QUIET)
    assert basis.options["layout"] == {"relu1": "channels", "conv2": "channels", "relu2": "channels",
                                       "fc1": "features", "output": "features"}
    assert [basis[n].dim for n in LAYERS] == [2, 2, 3, 3, 2]


@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_conv_G_M_and_edges_match_brute_force(cnn_case, target):
    model, x, acts = cnn_case
    basis = ia.compute_basis(model, x, LAYERS, jacobian_target=target, **QUIET)
    for l, name in enumerate(LAYERS):
        s = _samples(acts[l]).reshape(-1, basis[name].dim)
        cov = np.cov(s.numpy().T, bias=True).reshape(basis[name].dim, basis[name].dim)
        np.testing.assert_allclose(basis[name].G[:-1, :-1], cov, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(basis[name].mean, s.mean(0).numpy(), rtol=1e-9, atol=1e-12)
    for l in range(len(LAYERS) - 1):
        np.testing.assert_allclose(basis[LAYERS[l]].M, _reference_M(model, acts, basis, l, target), rtol=1e-8, atol=1e-11, err_msg=LAYERS[l])
    graph = ia.build_graph(model, x, basis, **QUIET)
    for l in range(len(LAYERS) - 1):
        np.testing.assert_allclose(graph.edge_matrix(LAYERS[l], LAYERS[l + 1]),
                                   _reference_edges(model, acts, basis, l), rtol=1e-7, atol=1e-10,
                                   err_msg=f"{LAYERS[l]} -> {LAYERS[l + 1]}")


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("n_probes", [None, 3])
def test_batches_too_large_for_one_cotangent_run_in_parts(include_bias, n_probes, monkeypatch):
    """When even one cotangent's backward pass over the batch overruns ``max_memory``, the
    output target's Jacobians run on parts of the batch, each with its own forward pass, and no
    graph of the whole batch is built first (one sample's pass measures the cost): the Grams
    equal the whole batch's (1e-10; probes keep their samples' draws), and the σ′ moments of the
    closed-form layers and the activation Grams read the parts' points and activations joined."""
    from intermod.analysis.core.nodes import NodeModel

    model, x = _cnn(), _data(12)
    opts = dict(jacobian_target="output", include_bias=include_bias, n_probes=n_probes, batch_size=12, **QUIET)
    whole = ia.compute_basis(model, x, LAYERS, **opts)
    passes = []
    real = NodeModel.forward
    monkeypatch.setattr(NodeModel, "forward", lambda net, batch, grad=False: passes.append((len(batch), grad)) or
                        real(net, batch, grad=grad))
    small = ia.compute_basis(model, x, LAYERS, max_memory=5000, **opts)
    with_grad = [b for b, grad in passes if grad]
    assert 12 not in with_grad and len(with_grad) > 2 and sum(with_grad[1:]) == 12, passes
    for n in LAYERS:
        np.testing.assert_allclose(small[n].G, whole[n].G, rtol=1e-12, atol=1e-14 * np.abs(whole[n].G).max())
        np.testing.assert_allclose(small[n].M, whole[n].M, rtol=1e-10, atol=1e-13 * np.abs(whole[n].M).max())
        np.testing.assert_allclose(small[n].Lambda, whole[n].Lambda, rtol=1e-10, atol=1e-14)
