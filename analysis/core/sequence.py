"""Models that apply their modules one after another.

An ``nn.Sequential`` cut at its children is such a model, and so is any module whose forward,
traced symbolically (:func:`torch.fx.symbolic_trace`), is a chain: one tensor input, then calls
that each take the previous result as their only tensor argument, of submodules or of
elementwise functions and reshapes (``torch.relu``, ``F.gelu``, ``x.tanh()``,
``torch.flatten``, ``F.max_pool2d``, …), to the output. A function call stands in as the
module that computes the same (``nn.ReLU``, ``nn.GELU(approximate)``, ``nn.Flatten``, …). On
such a model, sections run their own modules only, and the closed forms of
:mod:`~intermod.analysis.core.structured` and :mod:`~intermod.analysis.core.convolution` read
them: an MLP written as a class gets the same fast paths as the same ``nn.Sequential``.

A traced chain is used only when it reproduces the model's output on the example batch; any
model that does not trace as a chain (branches on data, residual additions, several inputs,
parameters used outside modules) keeps the generic path: sections by hooks and batched VJPs.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.func import functional_call

__all__ = ["ModuleSequence", "module_sequence"]


@dataclass(frozen=True)
class ModuleSequence:
    """The modules a model applies in order. ``paths[i]``: module i's path in the model, or None
    for the stand-in of a function call; ``scopes[i]``: the paths of every module whose forward
    runs module i (its own path, and those of the modules it is nested in)."""

    modules: tuple[nn.Module, ...]
    paths: tuple[str | None, ...]
    scopes: tuple[frozenset[str], ...]
    names: tuple[dict[str, str], ...]   # module i's parameter and buffer names -> the model's

    def index(self, path: str) -> int:
        """The first module that runs inside the module at ``path``: node layer ``path`` (the
        input of that module) is its input."""
        return next(i for i, scope in enumerate(self.scopes) if path in scope)

    def cuts_at(self, path: str) -> bool:
        """Whether the module at ``path`` runs as one unbroken run of this sequence's modules."""
        runs = [i for i, scope in enumerate(self.scopes) if path in scope]
        return bool(runs) and runs == list(range(runs[0], runs[-1] + 1))

    def __len__(self) -> int:
        return len(self.modules)

    def run(self, start: int, stop: int, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """Modules start … stop−1 applied to x, each with its parameters and buffers taken from
        ``params`` (by the model's names, ``"fc1.weight"``; a tensor shared by two modules has
        the one name the model lists it under), through functional calls (the modules' own
        hooks run)."""
        for module, names in zip(self.modules[start:stop], self.names[start:stop]):
            x = functional_call(module, {own: params[name] for own, name in names.items()}, (x,))
        return x


def module_sequence(model: nn.Module, layers: Sequence[str], example: Any, params: Mapping[str, Tensor],
                    run: Callable[[], Any]) -> ModuleSequence | None:
    """The chain of modules of ``model`` when it has one in which every layer in ``layers``
    (module paths; ``"output"`` aside) runs as one unbroken run of modules (a leaf module, or
    one whose forward is itself a chain, e.g. a block of Linear and ReLU), else None.

    An ``nn.Sequential`` whose layers are its children is taken as it is. Any other model is
    traced, and its chain kept only when, run on ``example`` with ``params`` (the model's
    names), it gives ``run()``, the model's own output there (to 1e-6 relative; call both in
    eval mode)."""
    wanted = [n for n in layers if n != "output"]
    children = dict(model.named_children())
    if isinstance(model, nn.Sequential) and all(n in children for n in wanted):
        return _sequence(model, list(children.values()), list(children), [frozenset([n]) for n in children])
    if not isinstance(example, Tensor):
        return None
    found = _traced(model)
    if found is None or not all(found.cuts_at(n) for n in wanted):
        return None
    with torch.no_grad():
        expected = run()   # also overwrites any attribute the traced forward assigned a symbol to
        try:
            got = found.run(0, len(found), example, params)
            same = (isinstance(expected, Tensor) and expected.is_floating_point() and got.shape == expected.shape
                    and bool(torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))))
        except Exception:   # a stand-in that does not take this input: not this chain
            return None
    return found if same else None


def _traced(model: nn.Module) -> ModuleSequence | None:
    """The chain of ``model``'s symbolic trace, or None (not traceable, or not a chain)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = fx.symbolic_trace(model).graph
    except Exception:   # any Python the tracer cannot follow: not a chain it can read
        return None
    sizes = _batch_sizes(graph)
    nodes = [n for n in graph.nodes if n not in sizes]
    if len(nodes) < 2 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    modules: list[nn.Module] = []
    paths: list[str | None] = []
    scopes: list[frozenset[str]] = []
    previous = nodes[0]
    for node in nodes[1:-1]:
        if len(set(previous.users).difference(sizes)) != 1 or not node.args or node.args[0] is not previous:
            return None
        if node in sizes.values():   # x.view(x.size(0), -1): a flatten of every axis after the first
            stand_in: nn.Module | None = nn.Flatten(1)
        elif any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
            return None
        elif node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
            stand_in = None
        elif node.op not in ("call_function", "call_method") or (stand_in := _stand_in(node)) is None:
            return None
        modules.append(model.get_submodule(node.target) if stand_in is None else stand_in)
        paths.append(node.target if stand_in is None else None)
        scopes.append(frozenset(node.meta.get("nn_module_stack", {})) | ({node.target} if paths[-1] else set()))
        previous = node
    called = [m for m, path in zip(modules, paths) if path is not None]
    if nodes[-1].args[0] is not previous or len(previous.users) != 1 or len({id(m) for m in called}) < len(called):
        return None   # not ending in the chain, or a module called twice (one cut, two inputs)
    return _sequence(model, modules, paths, scopes)


def _sequence(model: nn.Module, modules: list[nn.Module], paths: list[str | None],
              scopes: list[frozenset[str]]) -> ModuleSequence:
    """The sequence, with each module's tensors named as ``model`` lists them."""
    listed = {id(t): name for name, t in [*model.named_parameters(), *model.named_buffers()]}
    names = [{own: listed[id(t)] for own, t in [*m.named_parameters(remove_duplicate=False),
                                                 *m.named_buffers(remove_duplicate=False)]}
             if path is not None else {} for m, path in zip(modules, paths)]
    return ModuleSequence(tuple(modules), tuple(paths), tuple(scopes), tuple(names))


def _batch_sizes(graph: fx.Graph) -> dict[fx.Node, fx.Node]:
    """The nodes that read x.size(0) or x.shape[0] only to reshape x to (batch, −1)
    (``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], -1)``), each mapped to its reshape."""
    found: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if not (node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) == 3
                and node.args[2] == -1 and isinstance(node.args[1], fx.Node) and not node.kwargs):
            continue
        x, size = node.args[0], node.args[1]
        if size.op == "call_method" and size.target == "size" and size.args == (x, 0) and len(size.users) == 1:
            found[size] = node
        elif (size.op == "call_function" and size.target is operator.getitem and size.args[1] == 0
              and len(size.users) == 1 and isinstance(shape := size.args[0], fx.Node)
              and shape.op == "call_function" and shape.target is getattr and shape.args == (x, "shape")
              and len(shape.users) == 1):
            found[size] = found[shape] = node
    return found


def _without(kwargs: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in names}


def _same_arguments(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """A stand-in made from the function's arguments after the input (in-place flags dropped):
    ``F.leaky_relu(x, 0.1)`` is ``nn.LeakyReLU(0.1)``, ``F.max_pool2d(x, 2)`` ``nn.MaxPool2d(2)``."""
    return lambda *args, **kwargs: cls(*args, **_without(kwargs, "inplace"))


def _flatten(start_dim: int = 0, end_dim: int = -1) -> nn.Module:
    return nn.Flatten(start_dim, end_dim)   # torch.flatten starts at 0, nn.Flatten at 1


_FUNCTIONS: dict[Any, Callable[..., nn.Module]] = {
    torch.relu: _same_arguments(nn.ReLU), F.relu: lambda inplace=False: nn.ReLU(),
    torch.tanh: nn.Tanh, F.tanh: nn.Tanh, torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid,
    F.gelu: lambda approximate="none": nn.GELU(approximate), F.silu: lambda inplace=False: nn.SiLU(),
    F.mish: lambda inplace=False: nn.Mish(), F.leaky_relu: _same_arguments(nn.LeakyReLU),
    F.elu: _same_arguments(nn.ELU), F.softplus: _same_arguments(nn.Softplus),
    F.hardtanh: _same_arguments(nn.Hardtanh),
    F.dropout: lambda *args, **kwargs: nn.Identity(),   # every pass runs in eval mode
    torch.flatten: _flatten,
    F.max_pool1d: _same_arguments(nn.MaxPool1d), F.max_pool2d: _same_arguments(nn.MaxPool2d),
    F.avg_pool1d: _same_arguments(nn.AvgPool1d), F.avg_pool2d: _same_arguments(nn.AvgPool2d),
    F.adaptive_avg_pool1d: _same_arguments(nn.AdaptiveAvgPool1d),
    F.adaptive_avg_pool2d: _same_arguments(nn.AdaptiveAvgPool2d),
}
_METHODS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU, "relu_": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "flatten": _flatten,
}


def _stand_in(node: fx.Node) -> nn.Module | None:
    """The module that computes what a function or method call on its first argument does."""
    make = (_FUNCTIONS.get(node.target) if node.op == "call_function"
            else _METHODS.get(node.target) if isinstance(node.target, str) else None)
    if make is None:
        return None
    try:
        module = make(*node.args[1:], **node.kwargs)
    except TypeError:   # arguments the module does not take (e.g. return_indices positional)
        return None
    return module.eval()
