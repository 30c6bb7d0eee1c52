"""Degeneracy diagnostics: how many parameters a network really uses, and why (paper §3, seed 002).

:func:`diagnose` reports, per node layer, the spectra and ε-ranks of the activation Gram G and
the Jacobian Gram M (read from :func:`intermod.analysis.compute_basis`, the one place those
Grams are computed), the synchronised-neuron blocks and dead neurons of ReLU-like layers, and
the free directions each source implies; at the top level, their total as a lower bound on
N_free next to the nominal parameter count and, for small models, the rank of the
behavioural-gradient matrix (= rank of the behavioural-loss Hessian).

The pieces: :mod:`.structure` (how each node layer is consumed, from one traced forward pass),
:mod:`.synchrony` (blocks and dead neurons, one streaming pass), :mod:`.counting` (every count
and rank_ε formula), :mod:`.behavioural` (the Hessian rank), :mod:`.results` (the report
objects), :mod:`.plot` (spectra). The model always runs through the core's
:class:`~intermod.analysis.core.nodes.NodeModel` (parameter copies in the compute dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.basis import compute_basis, default_tol
from ..core.eval_mode import eval_mode
from ..core.inputs import Inputs, batch_to, iter_batches, resolve_device
from ..core.nodes import OUTPUT, NodeModel, default_output
from ..core.progress import Progress
from .behavioural import BehaviouralResult, behavioural_rank
from .counting import add_sync_counts, layer_diagnostics
from .results import DegeneracyReport, LayerDiagnostics
from .structure import trace_structure
from .synchrony import SyncAccumulator, SyncResult, synchronisation


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
    ``sync_tol``: tolerance on the paper's eq. 20 measure |r_a|² (activation units², default
    ε). ``behavioural_max_params``: the behavioural Gram is computed only for models with at
    most this many trainable parameters (memory O(P²) float64); above it ``behavioural_rank``
    is None and ``behavioural_reason`` says why.

    Returns a :class:`DegeneracyReport`; every formula is in :mod:`.counting`. The model is
    evaluated in eval mode and never modified.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if jacobian_target not in ("output", "next_layer"):
        raise ValueError(f"jacobian_target must be 'output' or 'next_layer', got {jacobian_target!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers: give at least one node layer")
    if all(name == OUTPUT for name in layers):
        raise ValueError("layers: diagnose needs a node layer inside the model (a module path), "
                         "not only 'output': the counts compare each layer with the next")
    with eval_mode(model):
        return _diagnose(model, inputs, layers, epsilon, include_bias=include_bias, center=center,
                         jacobian_target=jacobian_target, sync_tol=sync_tol,
                         behavioural_max_params=behavioural_max_params, output_fn=output_fn,
                         n_probes=n_probes, batch_size=batch_size, device=device, dtype=dtype,
                         seed=seed, progress=progress, callback=callback)


def _diagnose(model, inputs, layers, epsilon, *, include_bias, center, jacobian_target, sync_tol,
              behavioural_max_params, output_fn, n_probes, batch_size, device, dtype, seed,
              progress, callback) -> DegeneracyReport:
    output_fn = output_fn or default_output
    rtol = default_tol(dtype)   # relative floor of the numerical rank, as the core's tol_G/tol_M
    sync_tol = float(epsilon if sync_tol is None else sync_tol)
    dev = resolve_device(device)
    prog = Progress(progress, callback)
    modules = dict(model.named_modules())
    first = batch_to(next(iter(iter_batches(inputs, min(batch_size, 4)))), dev, dtype)
    nodes = NodeModel(model, layers, first, output_fn=output_fn, include_bias=False, dtype=dtype,
                      device=dev)
    links, order = trace_structure(model, first, layers, output_fn, run=nodes.run)
    by_layer = {lk.layer: lk for lk in links}
    node_order = [lk.layer for lk in links]

    # G and M from the core library, at the node layers plus the auxiliary cut points (the
    # inputs of the ReLU-like modules: the preactivations, where J and s_a live).
    aux = sorted({lk.act for lk in links if lk.act is not None} - set(node_order), key=order.index)
    need_output = any(lk.next == OUTPUT and lk.act is None for lk in links) and OUTPUT not in node_order
    basis_opts = {"center": center, "include_bias": include_bias, "n_probes": n_probes,
                  "output_fn": output_fn, "dtype": dtype, "batch_size": batch_size,
                  "device": device, "seed": seed, "progress": progress, "callback": callback}
    cuts = node_order + aux + ([OUTPUT] if need_output else [])
    all_cuts = sorted({n for n in cuts if n != OUTPUT}, key=order.index) + \
        ([OUTPUT] if OUTPUT in cuts else [])
    # The counts always use Jacobians of the behavioural output: with "next_layer" a direction
    # the next layer's basis dropped (zero variance there) would look like a missing Jacobian
    # direction although moving the weights along it changes the output.
    basis = compute_basis(model, inputs, all_cuts, jacobian_target="output", **basis_opts)
    # M^l (spectrum_M, rank_M) as the user's basis defines it: local, on the user's chain.
    basis_user = basis if jacobian_target == "output" else compute_basis(
        model, inputs, node_order, jacobian_target="next_layer", **basis_opts)

    acts = [lk.act for lk in links if lk.act is not None and lk.next is not None]
    sync = _sync_pass(nodes, modules, acts, inputs, batch_size, sync_tol, prog)

    counting = {"epsilon": epsilon, "rtol": rtol, "center": center, "include_bias": include_bias}
    producer = {lk.next: lk for lk in links if lk.next is not None}
    report_layers: dict[str, LayerDiagnostics] = {}
    for name in node_order:
        lk = by_layer[name]
        ld = layer_diagnostics(name, lk, basis_user[name], basis, modules.get(name), **counting)
        act = producer[name].act if name in producer else None
        res = sync.get(act) if act is not None else None
        add_sync_counts(ld, lk, act, res, basis[act] if res is not None else None, **counting)
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
    _add_behavioural(report, nodes, first, inputs, batch_size, behavioural_max_params, prog)
    return report


def _sync_pass(nodes: NodeModel, modules: dict[str, nn.Module], acts: list[str], inputs: Inputs,
               batch_size: int, sync_tol: float, prog: Progress) -> dict[str, SyncResult]:
    """One streaming pass with hooks on the ReLU-like modules ``acts``: their preactivations p
    (input) and activations f (output) into a :class:`SyncAccumulator` each; path →
    :func:`synchronisation` result."""
    if not acts:
        return {}
    accs: dict[str, SyncAccumulator] = {}
    store: dict[str, Tensor] = {}

    def pre(name):
        def hook(mod, args):
            store[name] = args[0].detach().clone()
        return hook

    def post(name):
        def hook(mod, args, out):
            p = store.pop(name)
            if name not in accs:
                accs[name] = SyncAccumulator(p.shape[-1], device=nodes.device)
            accs[name].add(p, out)
        return hook

    handles = [modules[n].register_forward_pre_hook(pre(n)) for n in acts]
    handles += [modules[n].register_forward_hook(post(n)) for n in acts]
    try:
        with torch.no_grad():
            for batch in prog.track(iter_batches(inputs, batch_size), "synchronisation", None):
                nodes.run(batch)
    finally:
        for h in handles:
            h.remove()
    return {name: synchronisation(acc, sync_tol) for name, acc in accs.items()}


def _add_behavioural(report: DegeneracyReport, nodes: NodeModel, first: Any, inputs: Inputs,
                     batch_size: int, max_params: int, prog: Progress) -> None:
    """The behavioural rank (:func:`behavioural_rank`) into ``report``, or the reason it is not
    computed (more than ``max_params`` trainable parameters)."""
    n_params = report.n_params
    if n_params > max_params:
        gb = n_params ** 2 * 8 / 2 ** 30
        report.behavioural_reason = (
            f"not computed: the model has {n_params} trainable parameters > "
            f"behavioural_max_params={max_params}; the Gram of behavioural gradients "
            f"is P×P float64 ({gb:.1f} GiB) and the per-sample gradients cost N·d_out backward "
            f"passes; raise behavioural_max_params to compute it")
        return
    # per-sample Jacobians of one vmap call: chunk × (outputs per sample) × P float64 ≤ 128 MiB
    with torch.no_grad():
        out_first = nodes.output_fn(nodes.run(first))
    per_sample = max(1, out_first[0].numel()) if out_first.ndim > 0 else 1
    chunk = max(1, min(batch_size, 2 ** 24 // (per_sample * max(n_params, 1))))
    batches = prog.track((b for big in iter_batches(inputs, batch_size)
                          for b in iter_batches(big, chunk)), "behavioural gradients", None)
    beh: BehaviouralResult = behavioural_rank(nodes.model, batches, report.epsilon,
                                              output_fn=nodes.output_fn, dtype=nodes.dtype,
                                              device=nodes.device, rtol=report.options["rtol"])
    report.behavioural_rank = beh.rank
    report.behavioural_rank_numerical = beh.rank_numerical
    report.behavioural_spectrum = beh.spectrum

