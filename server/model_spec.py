"""Declarative models: a list of layer specs <-> ``nn.Sequential`` (used by server and client).

A spec is ``{"layers": [{"type": "linear", "in_features": 4, "out_features": 8}, {"type":
"relu"}, ...]}`` (the JSON form of ``intermod.v1.ModelSpec``); weights follow the Sequential's
state_dict names (``"0.weight"``, ``"0.bias"``). New layer types are added with
:func:`register_layer`. Building a model never runs code from the client.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Spec = dict[str, Any]


class SpecError(ValueError):
    """A spec or its weights are invalid; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LayerType:
    """How to build one layer type from its spec and recognise it in an existing model.

    build(layer_spec, width_in) -> (module, width_out); width_in may be None (unknown).
    describe(module) -> layer spec, or None when the module is not of this type.
    """

    build: Callable[[Spec, int | None], tuple[nn.Module, int | None]]
    describe: Callable[[nn.Module], Spec | None]


LAYER_TYPES: dict[str, LayerType] = {}


def register_layer(name: str, build: Callable[[Spec, int | None], tuple[nn.Module, int | None]],
                   describe: Callable[[nn.Module], Spec | None]) -> None:
    """Add (or replace) a layer type of the declarative format."""
    LAYER_TYPES[name] = LayerType(build, describe)


def _positive(spec: Spec, key: str) -> int:
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SpecError(key, f"must be a positive integer, got {value!r}")
    return value


def _build_linear(spec: Spec, width: int | None) -> tuple[nn.Module, int | None]:
    d_in, d_out = _positive(spec, "in_features"), _positive(spec, "out_features")
    if width is not None and d_in != width:
        raise SpecError("in_features", f"is {d_in} but the previous layer outputs {width}")
    return nn.Linear(d_in, d_out, bias=spec.get("bias", True)), d_out


def _describe_linear(m: nn.Module) -> Spec | None:
    if type(m) is not nn.Linear:
        return None
    return {"type": "linear", "in_features": m.in_features, "out_features": m.out_features,
            "bias": m.bias is not None}


def _build_layernorm(spec: Spec, width: int | None) -> tuple[nn.Module, int | None]:
    d = _positive(spec, "in_features")
    if width is not None and d != width:
        raise SpecError("in_features", f"is {d} but the previous layer outputs {width}")
    affine = spec.get("elementwise_affine", True)
    eps = spec.get("eps", 1e-5)
    if not eps > 0:
        raise SpecError("eps", f"must be > 0, got {eps!r}")
    return nn.LayerNorm(d, eps=eps, elementwise_affine=affine,
                        bias=spec.get("bias", True) and affine), d


def _describe_layernorm(m: nn.Module) -> Spec | None:
    if type(m) is not nn.LayerNorm or len(m.normalized_shape) != 1:
        return None
    return {"type": "layernorm", "in_features": m.normalized_shape[0], "eps": m.eps,
            "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}


def _build_gelu(spec: Spec, width: int | None) -> tuple[nn.Module, int | None]:
    approximate = spec.get("approximate") or "none"
    if approximate not in ("none", "tanh"):
        raise SpecError("approximate", f"must be 'none' or 'tanh', got {approximate!r}")
    return nn.GELU(approximate=approximate), width


def _describe_gelu(m: nn.Module) -> Spec | None:
    if type(m) is not nn.GELU:
        return None
    return {"type": "gelu", **({"approximate": m.approximate} if m.approximate != "none" else {})}


def _ints(spec: Spec, key: str, default: Any, minimum: int) -> int | tuple[int, ...]:
    """An int or a list of ints ≥ ``minimum`` (kernel sizes, strides, padding); a list of one
    is that int, a longer list a tuple (one value per spatial axis)."""
    value = spec.get(key, default)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in items):
        raise SpecError(key, f"must be an integer >= {minimum} or a list of them, got {value!r}")
    return items[0] if len(items) == 1 else tuple(items)


def _conv(cls: type[nn.Module]) -> Callable[[Spec, int | None], tuple[nn.Module, int | None]]:
    """Conv1d / Conv2d: in_channels, out_channels, kernel_size, stride (1), padding (0), bias.
    The width after a conv is unknown (the data's spatial shape decides): the probe checks it."""
    def build(spec: Spec, width: int | None) -> tuple[nn.Module, int | None]:
        return cls(_positive(spec, "in_channels"), _positive(spec, "out_channels"),
                   _ints(spec, "kernel_size", None, 1), stride=_ints(spec, "stride", 1, 1),
                   padding=_ints(spec, "padding", 0, 0), bias=bool(spec.get("bias", True))), None
    return build


def _describe_conv(name: str, cls: type[nn.Module]) -> Callable[[nn.Module], Spec | None]:
    def describe(m: nn.Module) -> Spec | None:
        if type(m) is not cls or m.groups != 1 or m.dilation != (1,) * len(m.kernel_size) \
                or m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        return {"type": name, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": list(m.padding), "bias": m.bias is not None}
    return describe


def _pool(cls: type[nn.Module]) -> Callable[[Spec, int | None], tuple[nn.Module, int | None]]:
    """MaxPool / AvgPool: kernel_size, stride (= kernel_size); no parameters."""
    def build(spec: Spec, width: int | None) -> tuple[nn.Module, int | None]:
        return cls(_ints(spec, "kernel_size", None, 1),
                   stride=_ints(spec, "stride", spec.get("kernel_size"), 1)), width
    return build


def _describe_pool(name: str, cls: type[nn.Module]) -> Callable[[nn.Module], Spec | None]:
    def describe(m: nn.Module) -> Spec | None:
        if type(m) is not cls or m.padding not in (0, (0, 0)) or getattr(m, "ceil_mode", False) \
                or getattr(m, "dilation", 1) not in (1, (1, 1)):
            return None
        if cls is nn.AvgPool2d and not m.count_include_pad:
            return None
        def listed(v: int | tuple[int, ...]) -> list[int]:
            return list(v) if isinstance(v, tuple) else [v]
        return {"type": name, "kernel_size": listed(m.kernel_size), "stride": listed(m.stride)}
    return describe


def _build_flatten(spec: Spec, width: int | None) -> tuple[nn.Module, int | None]:
    return nn.Flatten(), None


def _describe_flatten(m: nn.Module) -> Spec | None:
    return {"type": "flatten"} if type(m) is nn.Flatten and (m.start_dim, m.end_dim) == (1, -1) else None


def _elementwise(name: str, cls: type[nn.Module]) -> None:
    register_layer(name, lambda spec, width: (cls(), width),
                   lambda m: {"type": name} if type(m) is cls else None)


register_layer("linear", _build_linear, _describe_linear)
register_layer("layernorm", _build_layernorm, _describe_layernorm)
register_layer("gelu", _build_gelu, _describe_gelu)
register_layer("flatten", _build_flatten, _describe_flatten)
for _name, _cls in {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d}.items():
    register_layer(_name, _conv(_cls), _describe_conv(_name, _cls))
for _name, _cls in {"maxpool2d": nn.MaxPool2d, "avgpool2d": nn.AvgPool2d}.items():
    register_layer(_name, _pool(_cls), _describe_pool(_name, _cls))
for _name, _cls in {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                    "identity": nn.Identity}.items():
    _elementwise(_name, _cls)


def build_model(spec: Spec) -> nn.Sequential:
    """The ``nn.Sequential`` of `spec` on the meta device: shapes only, no memory, so a spec
    declaring huge layers costs nothing until its weights (size-limited uploads) match it."""
    layers = spec.get("layers")
    if not layers:
        raise SpecError("spec.layers", "the spec has no layers")
    modules, width = [], None
    for i, layer in enumerate(layers):
        kind = str(layer.get("type", "")).lower()
        if kind not in LAYER_TYPES:
            raise SpecError(f"spec.layers[{i}].type",
                            f"unknown layer type {kind!r}; known: {sorted(LAYER_TYPES)}")
        try:
            with torch.device("meta"):
                module, width = LAYER_TYPES[kind].build(layer, width)
        except SpecError as exc:
            raise SpecError(f"spec.layers[{i}].{exc.field}", exc.message) from None
        except (RuntimeError, OverflowError, ValueError, TypeError) as exc:  # e.g. 2^31 x 2^31
            raise SpecError(f"spec.layers[{i}]", f"cannot be built: {exc}") from None
        modules.append(module)
    return nn.Sequential(*modules)


def load_model(spec: Spec, weights: Mapping[str, torch.Tensor]) -> nn.Sequential:
    """Build `spec` and load `weights` (strict: names and shapes must match exactly)."""
    model = build_model(spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise SpecError("weights", "spec/weights mismatch: "
                        + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                f"unexpected {unexpected}" if unexpected else "")
                                    if p))
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SpecError("weights", f"tensor {name!r} has shape {tuple(tensor.shape)}, the "
                                       f"spec needs {tuple(expected[name].shape)}")
        if not tensor.is_floating_point():
            raise SpecError("weights", f"tensor {name!r} has dtype {tensor.dtype}; weights "
                                       "must be floating point")
    dtypes = {t.dtype for t in weights.values()}
    if len(dtypes) > 1:
        raise SpecError("weights", f"tensors mix dtypes {sorted(map(str, dtypes))}")
    # assign=True puts copies of the weights in place of the meta tensors: no uninitialised
    # model first, and none of to_empty's meta-tensor machinery (which imports sympy, ~0.5 s).
    model.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=True, assign=True)
    unset = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if unset:
        raise SpecError("spec", f"tensors {unset} are not in the weights and have no value (buffers "
                                "that are not saved with the model)")
    return model.eval()


def describe_model(model: nn.Module) -> tuple[Spec, dict[str, torch.Tensor]]:
    """Spec and weights of an ``nn.Sequential`` built from registered layer types.

    Raises TypeError naming the first module the declarative format cannot express.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"only nn.Sequential models can be sent to a server, got "
                        f"{type(model).__name__}; analyse other models in process with "
                        "intermod.analysis, or have the server's operator register them")
    layers = []
    for i, module in enumerate(model):
        for layer_type in LAYER_TYPES.values():
            spec = layer_type.describe(module)
            if spec is not None:
                layers.append(spec)
                break
        else:
            raise TypeError(f"layer {i} ({type(module).__name__}) has no declarative form "
                            f"(supported: {sorted(LAYER_TYPES)}); analyse this model in "
                            "process with intermod.analysis, or register the layer type with "
                            "intermod.server.model_spec.register_layer on client and server")
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"layers": layers}, weights
