"""Cut any ``nn.Module`` into sections between node layers.

A node layer named by a module path is the *input* of that module; ``"output"`` is the
behavioural output ``output_fn(model(batch))``. Section j maps node layer j to node layer j+1.
Everything runs through :func:`torch.func.functional_call` with our own copies of the
parameters (cast to the compute dtype, biases optionally scaled), so the user's model is never
modified; hooks replace the activation at a cut point and stop the forward pass at the next.

Layout. Each node layer's tensor is read as (B, P, d) samples by its
:class:`~intermod.analysis.core.layout.Layout` (``self.layouts``), chosen by the rules of
:mod:`~intermod.analysis.core.layout` from the modules that read or produce it, or given by
``layout=``.

Bias slot. With ``include_bias`` every node activation f gets a constant slot s = 1 appended,
and a section is g(f, s) with *every bias parameter* scaled by s ("folding"), for any module.
The slot derivative ∂g/∂s is the forward-mode tangent of the section output when each bias b
gets tangent b (the activation at the cut is held fixed). With positions, each sample (input,
position) has its own slot; a bias added at the positions of the section's input (a Linear or
LayerNorm on features-last samples, a Conv or BatchNorm on a channels-first map of the same
positions) is attributed to its own position, and any other bias (added after the positions
changed: pooling, strided conv, flatten, a pooled classifier head) to the mean slot of the
input's valid positions (see :func:`~intermod.analysis.core.layout.spread_slot`). Biases of
modules that are not called as modules (e.g. ``nn.MultiheadAttention``'s ``out_proj``) carry
forward-mode tangents instead.

Linear heads. When the module at a cut point is, or begins with, ``nn.Linear`` and it pays
(:mod:`~intermod.analysis.core.heads`), derivatives are taken with respect to its output
z = W f + b s (the *point*; post hooks of the layer go on that Linear) and pulled back exactly
through the augmented weight P = [[W, b], [0, 1]]: per-sample work then scales with d_out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap

from .conv_taps import has_convolutions, tap_convs
from .eval_mode import eval_mode
from .folding import add_slot_bias, is_bias, slot_candidate
from .heads import linear_heads
from .inputs import Batch, batch_size_of, batch_to, position_mask
from .layout import CHANNELS_FIRST, Layout, LayoutSpec, requested_layouts, resolve_layout
from .outputs import OutputFn, default_output, output_getter
from .sequence import module_sequence
from .survey import OUTPUT, Survey, checked_layers, survey

__all__ = ["OUTPUT", "NodeModel", "OutputFn", "default_output"]


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the next node layer is reached."""


def _primal(x: Tensor) -> Tensor:
    return fwAD.unpack_dual(x).primal.detach()


class NodeModel:
    """A model cut at node layers: natural forward passes, sections, bias tangents.

    Attributes: ``layers`` (the user's node layers in forward order), ``chain`` (``layers``
    with ``"output"`` appended when absent: the terminal every Jacobian target ends at),
    ``layouts[layer]`` (how its tensor is read as samples), ``dims[layer]`` (feature size d_l),
    ``point_dims[layer]`` (size of the point derivatives are taken at), ``include_bias``,
    ``sequence`` (the model's :class:`~intermod.analysis.core.sequence.ModuleSequence`, or None),
    ``has_conv`` (whether its convolutions run inside :func:`~.conv_taps.tap_convs`).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], example: Batch, *,
                 output_fn: OutputFn | None, include_bias: bool, dtype: torch.dtype,
                 device: torch.device, layout: LayoutSpec = None):
        layers = checked_layers(layers, named := dict(model.named_modules()))
        self.model, self.has_conv = model, has_convolutions(model)
        self.output_fn = output_getter(output_fn)
        self.include_bias = include_bias
        self.dtype, self.device = dtype, device
        self.modules = {name: named[name] for name in layers if name != OUTPUT}
        self.params: dict[str, Tensor] = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.params[name] = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        self.bias_names = [n for n, _ in model.named_parameters() if is_bias(n)]
        self._bias_set = set(self.bias_names)
        self._slot_modules: dict[nn.Module, str] = {}
        self._slot_now: Tensor | None = None
        self._slot_share: Tensor | None = None
        self._share_tangent = False   # mean_slot_tangent: the mean slot carries tangent 1
        found, raw_output = self._forward_order(example, layers)
        shapes, called = found.shapes, found.called
        self.layers = found.order
        self.chain = self.layers + ([] if self.layers[-1] == OUTPUT else [OUTPUT])
        requested = requested_layouts(layout, self.chain)
        has_channels = any(isinstance(m, CHANNELS_FIRST) for m in model.modules())
        self.layouts: dict[str, Layout] = {
            n: resolve_layout(n, shapes[n], requested[n], evidence=found.evidence.get(n),
                              model_has_channels=has_channels) for n in self.chain}
        with torch.no_grad(), eval_mode(model):
            self.sequence = module_sequence(model, self.layers, example, self.params, raw_output)
        self.heads = linear_heads(self.modules, self.sequence, self.layouts)
        name_of = {id(p): n for n, p in model.named_parameters()}
        head_ids = {id(m) for m in self.heads.values()}
        self._slot_modules = {m: name_of[id(m.bias)] for m in model.modules()
                              if slot_candidate(m) and called.get(m, False)
                              and id(m) not in head_ids and id(m.bias) in name_of} if include_bias else {}
        head_biases = {name_of[id(m.bias)] for m in self.heads.values() if m.bias is not None}
        slot_biases = set(self._slot_modules.values())
        self._tangent_biases = [n for n in self.bias_names if n not in slot_biases | head_biases]
        self.needs_tangent = include_bias and bool(self._tangent_biases)
        self.dims = {n: self.layouts[n].n_features(shapes[n]) for n in self.chain}
        self.point_dims = {name: (self.heads[name].out_features if name in self.heads else self.dims[name])
                           for name in self.chain}

    # -- running the model -------------------------------------------------------------------
    def params_scaled(self, alpha: float = 1.0, tangent: bool = False) -> dict[str, Tensor]:
        """Parameters with every bias scaled by ``alpha`` (with ``include_bias``); with ``tangent``
        the biases that no slot hook covers become dual tensors whose tangent is the bias itself
        (call inside ``fwAD.dual_level``)."""
        if not self.include_bias or (alpha == 1.0 and not tangent):
            return self.params
        out = dict(self.params)
        for n in self.bias_names:
            out[n] = self.params[n] * alpha
        if tangent:
            for n in self._tangent_biases:
                out[n] = fwAD.make_dual(out[n], self.params[n])
        return out

    def run(self, batch: Batch) -> Any:
        """The model's raw output on ``batch`` (moved to the device, floating tensors cast to the
        compute dtype) with this object's parameter copies: no cut, no bias slot, no hooks of
        ours. Call it in eval mode (as every pass here is) when the model has dropout."""
        return self._call(batch_to(batch, self.device, self.dtype), self.params)

    def _call(self, batch: Batch, params: Mapping[str, Tensor]) -> Any:
        with tap_convs(self.has_conv):   # float64 convolutions outside autograd: by kernel taps
            args, kw = ((batch,), {}) if isinstance(batch, Tensor) else ((), dict(batch))
            return functional_call(self.model, dict(params), args, kw)

    @contextmanager
    def _hooks(self, pre: Mapping[str, Callable] | None = None, post: Mapping[str, Callable] | None = None):
        """Node hooks (``pre`` on the layers' modules, ``post`` on their Linear heads where they
        have one, else on the modules) plus the bias-slot hooks, in eval mode; everything
        removed afterwards."""
        handles = [self.modules[n].register_forward_pre_hook(h) for n, h in (pre or {}).items()]
        handles += [self.heads.get(n, self.modules[n]).register_forward_hook(h) for n, h in (post or {}).items()]
        handles += [m.register_forward_hook(self._slot_hook(name)) for m, name in self._slot_modules.items()]
        try:
            with eval_mode(self.model):
                yield
        finally:
            self._slot_now = None
            for h in handles:
                h.remove()

    def _slot_hook(self, bias_name: str) -> Callable:
        """Forward hook of a Linear / LayerNorm (bias on the last axis) or Conv / BatchNorm (bias
        on axis 1): out + (s − 1) b with s the active slot leaf (B, *positions) of ones, so the
        value is unchanged and ∂/∂s_p is the bias b added at position p. Where the module's
        positions are not the slot's (after pooling, flatten, ...), s is the mean slot
        s̄ = Σ_p ŵ_p s_p over the valid positions (ŵ: ``_slot_share``)."""
        def hook(module, args, out):
            if self._slot_now is None or not isinstance(out, Tensor):
                return None
            return add_slot_bias(module, out, self.params[bias_name], self._slot_now, self._slot_share)
        return hook

    def _new_slot(self, like: Tensor, name: str, batch: Batch) -> Tensor | None:
        """A leaf of ones over the samples of ``like`` (node layer ``name``'s point, (B, …)),
        made the active slot, with the share ŵ_p = w_p / Σ w of each valid position."""
        if not self.include_bias:
            return None
        layout = self.layouts[name]
        w = layout.weights(like.shape, position_mask(batch), like.dtype, like.device)
        shape = layout.slot_shape(like.shape)
        self._slot_share = (w / w.sum(-1, keepdim=True).clamp_min(1.0)).reshape(shape)
        if self._share_tangent:   # s̄ = Σ_p ŵ_p s_p gets tangent Σ_p ŵ_p = 1; s_p itself none
            self._slot_share = fwAD.make_dual(self._slot_share, self._slot_share)
        self._slot_now = torch.ones(shape, dtype=like.dtype, device=like.device, requires_grad=True)
        return self._slot_now

    def _forward_order(self, example: Batch, layers: list[str]) -> tuple[Survey, Any]:
        """One plain forward pass of ``example`` that surveys the cut points (:func:`survey`);
        also returns the model's raw output there."""
        raw: list[Any] = []

        def run() -> Any:
            raw.append(self._call(example, self.params))
            return self.output_fn(raw[-1])
        with torch.no_grad(), self._hooks():
            found = survey(self.modules, self.model.modules(), run, batch_size_of(example))
        missing = [n for n in self.modules if n not in found.order]
        if missing:
            raise ValueError(f"layers {missing} are never called in the forward pass")
        found.order += [OUTPUT] if OUTPUT in layers else []
        return found, raw[-1]

    def forward(self, batch: Batch, *, grad: bool = False) -> dict[str, Tensor]:
        """Natural forward pass: activations at every chain layer (``"output"`` included).

        With ``grad``, the activations are part of one autograd graph (the first one made a leaf
        when nothing upstream requires grad), ``self.last_points`` holds the tensors that
        derivatives are taken at (the Linear-head outputs where there is a head) and
        ``self.last_slots`` the bias-slot leaves of every section (None without a slot).
        """
        acts: dict[str, Tensor] = {}
        points: dict[str, Tensor] = {}
        slots: dict[str, Tensor | None] = {}

        def make_pre(name: str):
            def hook(module, args):
                x = args[0]
                if grad and not x.requires_grad:
                    x = x.detach().requires_grad_(True)
                acts[name] = x
                if name not in self.heads:
                    points[name] = x
                if grad:   # section `name` starts here: its own bias-slot leaf
                    slots[name] = self._new_slot(x, name, batch)
                return (x.clone(),) + tuple(args[1:])   # an in-place op downstream must not touch x
            return hook

        def make_post(name: str):
            def hook(module, args, out):
                points[name] = out
                return out.clone()
            return hook

        with torch.set_grad_enabled(grad), self._hooks(
                {n: make_pre(n) for n in self.modules}, {n: make_post(n) for n in self.heads}):
            y = self.output_fn(self._call(batch, self.params))
        acts[OUTPUT] = points[OUTPUT] = y
        self.last_points = points
        self.last_slots = [slots.get(n) for n in self.chain[:-1]]
        return {n: acts[n] for n in self.chain}

    def run_replacing(self, batch: Batch, replace: Mapping[str, Callable[[Tensor], Tensor]],
                      replace_out: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        """The output ``output_fn(model(batch))`` with the activation f of every node layer in
        ``replace`` swapped for ``replace[layer](f)`` on its way in (the ``"output"`` entry, if
        any, maps the output itself) and, for layers in ``replace_out``, the module's output z
        swapped for ``replace_out[layer](z)``. No gradients."""
        def make_pre(fn: Callable[[Tensor], Tensor]):
            def hook(module, args):
                return (fn(args[0]),) + tuple(args[1:])
            return hook

        def make_post(fn: Callable[[Tensor], Tensor]):
            def hook(module, args, out):
                return fn(out)
            return hook

        pre = {n: make_pre(fn) for n, fn in replace.items() if n != OUTPUT}
        post = {n: make_post(fn) for n, fn in (replace_out or {}).items()}
        with torch.no_grad(), self._hooks(pre, post):
            y = self.output_fn(self._call(batch, self.params))
        return replace[OUTPUT](y) if OUTPUT in replace else y

    def section(self, batch: Batch, j: int, *, point: Tensor | None = None, alpha: float = 1.0,
                tangent: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run section j: returns (point, f_out, slot).

        ``point`` (returned as a fresh leaf that requires grad) is the given value, or the natural
        point of node layer j (its activation, or its Linear head's output); the section's biases
        are scaled by ``alpha`` and f_out is node layer j+1 as a function of the point. ``slot``
        (a leaf of ones over the point's samples) multiplies the Linear / LayerNorm biases added
        at each position, so a VJP gives their per-position slot derivative. With ``tangent``
        (inside ``fwAD.dual_level``) the other biases carry tangents (see :meth:`bias_tangent`).
        """
        if self.sequence is not None and point is not None:
            return self._sequence_section(batch, j, point, alpha, tangent)
        found: dict[str, Tensor | None] = {}

        def cut(x: Tensor) -> Tensor:
            value = _primal(x) if point is None else point.detach()
            found["point"] = p = value.clone().requires_grad_(True)
            self._arm_biases(alpha, tangent)
            found["slot"] = self._new_slot(p, self.chain[j], batch)
            return p.clone()

        with torch.enable_grad():
            f_out = self._run_cut(batch, j, cut)
        return found["point"], f_out, found["slot"]

    def _run_cut(self, batch: Batch, j: int, cut: Callable[[Tensor], Tensor]) -> Tensor:
        """Node layer j+1 when the model runs on ``batch`` with node layer j's point x replaced by
        ``cut(x)`` (at the module's input, or its Linear head's output); the pass stops there."""
        src, dst = self.chain[j], self.chain[j + 1]
        found: dict[str, Tensor] = {}

        def pre_dst(module, args):
            found["f_out"] = args[0]
            raise _Stop

        pre = {} if src in self.heads else {src: lambda module, args: (cut(args[0]),) + tuple(args[1:])}
        if dst != OUTPUT:
            pre[dst] = pre_dst
        post = {src: lambda module, args, out: cut(out)} if src in self.heads else {}
        with self._hooks(pre, post):
            try:   # the prefix runs with plain biases; the cut arms the scaled / dual ones
                found["f_out"] = self.output_fn(self._call(batch, self.params))
            except _Stop:
                pass
        return found["f_out"]

    def _arm_biases(self, alpha: float, tangent: bool) -> None:
        """From the cut point on, every bias is scaled by ``alpha`` (and carries tangent b).

        Called inside a functional call, which restores all parameters when it returns. Biases
        used before the cut keep their plain values, so a residual stream that skips the cut
        point enters the section as a constant (the section's Jacobian and slot derivative are
        partial derivatives at that residual).
        """
        if not self.include_bias or (alpha == 1.0 and not tangent):
            return
        for name, value in self.params_scaled(alpha, tangent).items():
            if name in self._bias_set:
                path, leaf = name.rsplit(".", 1) if "." in name else ("", name)
                self.model.get_submodule(path)._parameters[leaf] = value

    def _sequence_bounds(self, j: int) -> tuple[int, int]:
        """Section j's modules in the model's :class:`~intermod.analysis.core.sequence.ModuleSequence`:
        start … stop−1."""
        seq, src, dst = self.sequence, self.chain[j], self.chain[j + 1]
        assert seq is not None, "not a sequence of modules"
        start = seq.index(src) + int(src in self.heads)
        return start, len(seq) if dst == OUTPUT else seq.index(dst)

    def _sequence_section(self, batch: Batch, j: int, point: Tensor, alpha: float, tangent: bool
                          ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Fast path for a model that applies its modules in sequence: run only the section's."""
        leaf = point.detach().clone().requires_grad_(True)
        with torch.enable_grad(), self._hooks(), tap_convs(self.has_conv):
            slot = self._new_slot(leaf, self.chain[j], batch)
            out = self.sequence.run(*self._sequence_bounds(j), leaf.clone(), self.params_scaled(alpha, tangent))
            if self.chain[j + 1] == OUTPUT:
                out = self.output_fn(out)
        return leaf, out, slot

    def bias_tangent(self, batch: Batch, j: int, point: Tensor | None = None, alpha: float = 1.0
                     ) -> Tensor:
        """β_j = ∂f^{j+1}/∂s through the biases no slot hook covers (not Linear / LayerNorm, e.g.
        ``nn.MultiheadAttention``'s in_proj_bias), the point of layer j held fixed; same shape as
        f^{j+1}. Their effect at output position t is attributed to the slot of position t when
        the section keeps the positions, else spread over the input's (:func:`spread_slot`)."""
        with fwAD.dual_level():
            return _tangent(self.section(batch, j, point=point, alpha=alpha, tangent=True)[1])

    def mean_slot_tangent(self, batch: Batch, j: int, point: Tensor | None = None, alpha: float = 1.0
                          ) -> Tensor:
        """τ_j = ∂f^{j+1}/∂s̄ through the hooked biases driven by the mean slot s̄ (those added
        where the positions are not the input's, :meth:`_slot_hook`) only, the point of layer j
        held fixed; same shape as f^{j+1}. The biases driven by their own position's slot get
        no tangent (see :mod:`~intermod.analysis.core.colouring`)."""
        with fwAD.dual_level():
            self._share_tangent = True
            try:
                return _tangent(self.section(batch, j, point=point, alpha=alpha)[1])
            finally:
                self._share_tangent = False

    def section_jvp(self, batch: Batch, j: int, point: Tensor, alpha: float, d_point: Tensor,
                    d_slot: Tensor | None) -> Tensor:
        """∂f^{j+1} along K tangents (d_point (K, *point.shape), d_slot (K, B, *positions)): section j
        in forward mode at ``point`` (its biases scaled by ``alpha``), the slot leaf's tangent
        reaching the biases through the slot hooks as in :meth:`section`; (K, *f^{j+1}.shape).
        A traced chain runs the K tangents as one batch of K·B samples; any other model maps
        ``torch.func.jvp`` over them with ``vmap``, so the prefix before the cut runs once. A zero
        d_slot (every direction but the constant one of a centred basis) leaves the slot hooks out."""
        K, B = d_point.shape[:2]
        moves = d_slot is not None and bool(d_slot.any())
        if self.sequence is None:
            slot = self._new_slot(point, self.chain[j], batch) if moves else None   # sets the share too
            self._slot_now = None                                  # the prefix runs without the slot

            def run(p: Tensor, s: Tensor | None) -> Tensor:
                def cut(x: Tensor) -> Tensor:
                    self._arm_biases(alpha, False)
                    self._slot_now = s
                    return p.clone()
                return self._run_cut(batch, j, cut)
            if slot is None:
                return vmap(lambda v: jvp(lambda p: run(p, None), (point,), (v,))[1])(d_point)
            return vmap(lambda v, s: jvp(run, (point, slot.detach()), (v, s))[1])(
                d_point, d_slot.reshape((K,) + tuple(slot.shape)))   # positions flat or not, as below
        x = point.repeat((K,) + (1,) * (point.ndim - 1))                       # (K·B, …), k major
        with fwAD.dual_level(), torch.no_grad(), self._hooks():
            if moves:
                slot = self._new_slot(x, self.chain[j], batch)
                self._slot_now = fwAD.make_dual(slot.detach(), d_slot.reshape(slot.shape))
            out = self.sequence.run(*self._sequence_bounds(j), fwAD.make_dual(x, d_point.flatten(0, 1)),
                                     self.params_scaled(alpha))
            out = _tangent(self.output_fn(out) if self.chain[j + 1] == OUTPUT else out)
        return out.view((K, B) + tuple(out.shape[1:]))

    def section_modules(self, j: int) -> list[nn.Module] | None:
        """The modules that section j runs, in order, or None when the model is not a sequence
        of modules cut at them (:mod:`~intermod.analysis.core.sequence`)."""
        if self.sequence is None:
            return None
        return list(self.sequence.modules[slice(*self._sequence_bounds(j))])

    def modules_before(self, name: str) -> list[nn.Module] | None:
        """The modules that run from the model's input to node layer ``name`` (the input of its
        module), or None (not a sequence of modules cut at them)."""
        if self.sequence is None or name == OUTPUT:
            return None
        return list(self.sequence.modules[:self.sequence.index(name)])

    def slot_hooked(self, module: nn.Module) -> bool:
        """Whether ``module``'s bias is scaled by the slot through a forward hook."""
        return module in self._slot_modules

    # -- linear algebra of cut points --------------------------------------------------------
    def pullback(self, name: str) -> Tensor | None:
        """P with point_aug = P @ f_aug: [[W, b], [0, 1]] for a Linear head (float64), None for
        the identity (no head: no product to do)."""
        if name not in self.heads:
            return None
        aug, d = int(self.include_bias), self.dims[name]
        lin = self.heads[name]
        W = self.params[self._param_name(lin, "weight")].to(torch.float64)
        if not aug:
            return W
        P = torch.zeros(W.shape[0] + 1, d + 1, dtype=torch.float64, device=self.device)
        P[:-1, :-1] = W
        if lin.bias is not None:
            P[:-1, -1] = self.params[self._param_name(lin, "bias")].to(torch.float64)
        P[-1, -1] = 1.0
        return P

    def head_bias(self, name: str) -> Tensor | None:
        """The bias b of the Linear head at ``name`` (compute dtype), if any."""
        lin = self.heads.get(name)
        return None if lin is None or lin.bias is None else self.params[self._param_name(lin, "bias")]

    def _param_name(self, module: nn.Module, leaf: str) -> str:
        """The name in ``self.params`` of ``module``'s parameter or buffer ``leaf``."""
        target = getattr(module, leaf)
        return next(n for n, p in [*self.model.named_parameters(), *self.model.named_buffers()] if p is target)


def _tangent(y: Tensor) -> Tensor:
    """The forward-mode tangent of y (zeros where y does not depend on a dual tensor), detached."""
    primal, tan = fwAD.unpack_dual(y)
    return (torch.zeros_like(primal) if tan is None else tan).detach()
