"""A plain, per-sample Python reference of docs/design.md §1 for small MLPs (tests only).

Everything here loops over samples and builds full augmented Jacobians with
torch.autograd.functional.jacobian; nothing is shared with intermod's batched code.
"""

from __future__ import annotations

import numpy as np
import torch


def aug_section(section, include_bias):
    """(f, s) -> (g(f, s), s): the section with its bias scaled by the slot s."""
    def fn(f_aug):
        if include_bias:
            f, s = f_aug[:-1], f_aug[-1]
            return torch.cat([section(f, s), s.reshape(1)])
        return section(f_aug, torch.tensor(1.0, dtype=f_aug.dtype))
    return fn


def eig_desc(A):
    vals, vecs = np.linalg.eigh((A + A.T) / 2)
    return vals[::-1], vecs[:, ::-1]


def rotation(G, M, mean, center, include_bias, tol=1e-10):
    """Interaction basis by the book: returns C, Cinv, Lambda (slot direction first when centred)."""
    d = len(mean)
    if center and include_bias:
        Y = np.eye(d + 1)
        Y[:d, d] = -mean
        Dd, Ud = eig_desc(G[:d, :d])
        keep = Dd > tol * Dd.max()
        U = np.zeros((d + 1, keep.sum() + 1))
        U[d, 0] = 1
        U[:d, 1:] = Ud[:, keep]
        D = np.concatenate([[1.0], Dd[keep]])
    else:
        Y = np.eye(G.shape[0])
        D, U = eig_desc(G)
        keep = D > tol * D.max()
        D, U = D[keep], U[:, keep]
    Yinv = np.linalg.inv(Y)
    Mt = np.diag(D ** 0.5) @ U.T @ Yinv.T @ M @ Yinv @ U @ np.diag(D ** 0.5)
    if center and include_bias:
        lam, V = eig_desc(Mt[1:, 1:])
        keep = lam > tol * lam.max()
        lam, V = lam[keep], V[:, keep]
        Vf = np.zeros((Mt.shape[0], V.shape[1] + 1))
        Vf[0, 0] = 1
        Vf[1:, 1:] = V
        lam, V = np.concatenate([[Mt[0, 0]], lam]), Vf
    else:
        lam, V = eig_desc(Mt)
        keep = lam > tol * lam.max()
        lam, V = lam[keep], V[:, keep]
    C = Y.T @ U @ np.diag(D ** -0.5) @ V @ np.diag(lam ** 0.5)
    Cinv = Yinv @ U @ np.diag(D ** 0.5) @ V @ np.diag(lam ** -0.5)
    return C, Cinv, lam


def align_signs(C_ref, C):
    """Flip columns of C_ref to match C (the basis is unique up to signs)."""
    s = np.sign(np.sum(C_ref * C, axis=0))
    return C_ref * np.where(s == 0, 1, s)


def gauss_legendre(n):
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2
