"""An independent reference for ablations (tests only): plain ``register_forward_pre_hook``
hooks on the model, numpy linear algebra on the graph's C, C⁻¹ and means, Python loops over
output directions. Nothing here calls intermod's ablation code.

"Ablate" (DESIGN.md §1): f̂ = Cᵀ f_aug, f_aug′ = C⁻¹ (m ⊙ f̂) with the constant direction kept
(with ``center`` it carries the mean), and the data rows of f_aug′ are written back.
"""

from __future__ import annotations

import numpy as np
import torch


class _Stop(Exception):
    pass


def hat(graph, layer: str, f: np.ndarray) -> np.ndarray:
    """f̂ = Cᵀ (f, 1) (the slot row appended when C has one)."""
    C = graph.bases[layer][0]
    fa = np.concatenate([f, np.ones(f.shape[:-1] + (1,))], -1) if C.shape[0] == f.shape[-1] + 1 else f
    return fa @ C


def unhat(graph, layer: str, h: np.ndarray, d: int) -> np.ndarray:
    """The data rows of C⁻¹ f̂."""
    return (h @ graph.inverses[layer].T)[..., :d]


def masked(graph, layer: str, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """f -> C⁻¹ (m ⊙ Cᵀ f_aug), constant direction kept."""
    m = np.asarray(m, dtype=float).copy()
    start = graph.node_offset[layer]
    m[graph.is_bias[start:start + graph.layer_sizes[layer]]] = 1.0
    return unhat(graph, layer, hat(graph, layer, f) * m, f.shape[-1])


def call(model, batch):
    return model(**batch) if isinstance(batch, dict) else model(batch)


def run(model, batch, replace: dict, stop_at: str | None = None) -> np.ndarray:
    """The output (or the input arriving at ``stop_at``) with the inputs of the modules in
    ``replace`` swapped: a value (np array, written as is) or a function of the arriving input.
    ``replace["output"]`` maps the output."""
    handles, seen = [], {}

    def writer(value):
        def hook(module, args):
            x = args[0]
            new = value(x.detach().numpy()) if callable(value) else value
            return (torch.as_tensor(new, dtype=x.dtype),) + tuple(args[1:])
        return hook

    def stopper(module, args):
        seen["x"] = args[0].detach().numpy()
        raise _Stop

    for name, value in replace.items():
        if name != "output":
            handles.append(model.get_submodule(name).register_forward_pre_hook(writer(value)))
    if stop_at is not None and stop_at != "output":
        handles.append(model.get_submodule(stop_at).register_forward_pre_hook(stopper))
    try:
        with torch.no_grad():
            y = call(model, batch).detach().numpy()
    except _Stop:
        return seen["x"]
    finally:
        for h in handles:
            h.remove()
    if "output" in replace:
        v = replace["output"]
        y = v(y) if callable(v) else v
    return y


def natural(model, batch, layer: str) -> np.ndarray:
    return run(model, batch, {}, stop_at=layer)


def edge_ablated_output(model, batch, graph, keep: list[np.ndarray], nodes: np.ndarray | None = None) -> np.ndarray:
    """Section by section: direction i of layer l+1 from C⁻¹(m_i ⊙ f̂^l), one run per direction."""
    layers = graph.layers
    node_mask = np.ones(graph.n_nodes) if nodes is None else np.asarray(nodes, dtype=float)
    node_mask = np.maximum(node_mask, graph.is_bias)

    def nm(layer):
        s = graph.node_offset[layer]
        return node_mask[s:s + graph.layer_sizes[layer]]

    f = natural(model, batch, layers[0])
    f = masked(graph, layers[0], f, nm(layers[0]))
    for j in range(len(layers) - 1):
        src, dst = layers[j], layers[j + 1]
        rows = []
        for i in range(graph.layer_sizes[dst]):
            f_in = masked(graph, src, f, keep[j][i] * nm(src))
            out = run(model, batch, {src: f_in}, stop_at=dst)
            rows.append(hat(graph, dst, out)[..., i])
        h = np.stack(rows, -1) * nm(dst)
        start = graph.node_offset[dst]
        const = graph.is_bias[start:start + graph.layer_sizes[dst]]
        h[..., const] = hat(graph, dst, natural(model, batch, dst))[..., const]
        f = unhat(graph, dst, h, f.shape[-1] if dst == src else out.shape[-1])
    if layers[-1] == "output":
        return f
    return run(model, batch, {layers[-1]: f})


def node_ablated_output(model, batch, graph, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Every layer in ``masks`` rewrites its arriving input: f -> C⁻¹(m ⊙ Cᵀ f_aug)."""
    return run(model, batch, {name: (lambda x, name=name, m=m: masked(graph, name, x, m))
                              for name, m in masks.items()})


def mse(ya: np.ndarray, y: np.ndarray) -> float:
    return float(((ya - y) ** 2).mean())


def kl(ya: np.ndarray, y: np.ndarray) -> float:
    def logsm(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp, lq = logsm(y), logsm(ya)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def cut_keep(graph, membership: np.ndarray) -> list[np.ndarray]:
    """Keep matrices of a module cut: i (module c, layer l+1) sees module c at layer l."""
    out = []
    for a, b in zip(graph.layers, graph.layers[1:]):
        ma = membership[graph.node_offset[a]:graph.node_offset[a] + graph.layer_sizes[a]]
        mb = membership[graph.node_offset[b]:graph.node_offset[b] + graph.layer_sizes[b]]
        out.append(((mb[:, None] == ma[None, :]) & (mb[:, None] >= 0)).astype(float))
    return out
