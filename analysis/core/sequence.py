"""Models that apply their modules one after another.

An ``nn.Sequential`` cut at its children is such a model, and so is any module whose forward,
traced symbolically (:func:`torch.fx.symbolic_trace`), is a chain: one tensor input, then calls
that each take the previous result as their only tensor argument, of submodules or of
elementwise functions and reshapes (``torch.relu``, ``F.gelu``, ``x.tanh()``,
``torch.flatten``, ``F.max_pool2d``, …), to the output. A function call stands in as the
module that computes the same (``nn.ReLU``, ``nn.GELU(approximate)``, ``nn.Flatten``, …), and a
sum body(x) + shortcut(x) of two chains from the chain's value (the shortcut x itself, or a
projection such as ResNet's ``downsample``) as a :class:`Residual` unit; a module without
weights (``self.relu``) may be called more than once, but is then no cut point. On
such a model, sections run their own modules only, and the closed forms of
:mod:`~intermod.analysis.core.structured` and :mod:`~intermod.analysis.core.convolution` read
them: an MLP written as a class gets the same fast paths as the same ``nn.Sequential``.

A traced chain is used only when it reproduces the model's output on the example batch; any
model that does not trace as a chain (branches on data, other sums, several inputs,
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

__all__ = ["ModuleSequence", "Residual", "module_sequence"]


@dataclass(frozen=True)
class ModuleSequence:
    """The modules a model applies in order. ``paths[i]``: module i's path in the model, or None
    for the stand-in of a function call or a :class:`Residual` unit; ``scopes[i]``: the paths of
    every module whose forward runs module i (its own path, and those of the modules it is
    nested in; for a residual unit, those around its sum)."""

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
                    expected: Any) -> ModuleSequence | None:
    """The chain of modules of ``model`` when it has one in which every layer in ``layers``
    (module paths; ``"output"`` aside) runs as one unbroken run of modules (a leaf module, or
    one whose forward is itself a chain, e.g. a block of Linear and ReLU), else None.

    An ``nn.Sequential`` whose layers are its children is taken as it is when its modules are
    all torch's own; with modules of other classes (blocks with a forward of their own) it is
    traced through them when that gives a chain, else taken as it is. Any other model is traced,
    and a traced chain is kept only when, run on ``example`` with ``params`` (the model's names),
    it gives ``expected``, the model's own output there (to 1e-6 relative; in eval mode)."""
    wanted = [n for n in layers if n != "output"]
    children = dict(model.named_children())
    if isinstance(model, nn.Sequential) and all(n in children for n in wanted):
        as_is = _sequence(model, list(children.values()), list(children), [frozenset([n]) for n in children])
        if all(type(m).__module__.startswith("torch.") for m in model.modules()):
            return as_is
        return _checked(model, wanted, example, params, expected) or as_is
    return _checked(model, wanted, example, params, expected)


def _checked(model: nn.Module, wanted: Sequence[str], example: Any, params: Mapping[str, Tensor],
             expected: Any) -> ModuleSequence | None:
    """``model``'s traced chain when every layer in ``wanted`` runs as one unbroken run of it and
    it reproduces ``expected`` on ``example`` (:func:`module_sequence`), else None."""
    if not isinstance(example, Tensor):
        return None
    found = _traced(model)
    if found is None or not all(found.cuts_at(n) for n in wanted):
        return None
    with torch.no_grad():
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
    called: list[nn.Module] = []           # the model's own modules, to refuse one called twice
    previous, i = nodes[0], 1
    while i < len(nodes) - 1:
        users = set(previous.users).difference(sizes)
        if len(users) == 2:                # body(x) + shortcut(x)
            unit = _residual(model, previous, users, nodes, i, sizes)
            if unit is None:
                return None
            body, shortcut, i = unit
            modules.append(Residual([module for module, _ in body], [module for module, _ in shortcut]))
            paths.append(None)
            scopes.append(frozenset(nodes[i].meta.get("nn_module_stack", {})))   # the modules around the sum
            called += [module for module, path in body + shortcut if path]
        else:
            element = _element(model, nodes[i], previous, sizes) if len(users) == 1 else None
            if element is None:
                return None
            module, path = element
            modules.append(module)
            paths.append(path)
            scopes.append(frozenset(nodes[i].meta.get("nn_module_stack", {})) | ({path} if path else set()))
            called += [module] if path else []
        previous, i = nodes[i], i + 1
    stateful = [m for m in called if next(iter([*m.parameters(), *m.buffers()]), None) is not None]
    if nodes[-1].args[0] is not previous or len(previous.users) != 1 or len({id(m) for m in stateful}) < len(stateful):
        return None   # not ending in the chain, or a module with weights called twice (shared along the chain)
    return _sequence(model, modules, paths, scopes)


def _element(model: nn.Module, node: fx.Node, previous: fx.Node, sizes: Mapping[fx.Node, fx.Node]
             ) -> tuple[nn.Module, str | None] | None:
    """(module, its path or None for a stand-in) of a call that takes ``previous`` as its only
    tensor argument, or None."""
    if not node.args or node.args[0] is not previous:
        return None
    if node in sizes.values():   # x.view(x.size(0), -1): a flatten of every axis after the first
        return nn.Flatten(1), None
    if any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
        return None
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        return model.get_submodule(node.target), node.target
    stand_in = _stand_in(node) if node.op in ("call_function", "call_method") else None
    return None if stand_in is None else (stand_in, None)


_SUMS = (operator.add, operator.iadd, torch.add)


def _residual(model: nn.Module, x: fx.Node, users: set[fx.Node], nodes: list[fx.Node], i: int,
              sizes: Mapping[fx.Node, fx.Node]
              ) -> tuple[list[tuple[nn.Module, str | None]], list[tuple[nn.Module, str | None]], int] | None:
    """(the body's and the shortcut's (module, path) pairs, the index of the sum) when nodes[i:]
    are two chains from x whose ends are added, body(x) + shortcut(x) (the shortcut empty for
    x itself, either order; ResNet's projection ``downsample(x)`` otherwise), and nothing else
    runs before the sum; else None."""
    chains = [_chain_to_sum(model, x, start, sizes) for start in sorted(users, key=nodes.index)]
    if any(c is None for c in chains) or chains[0][2] is not chains[1][2]:   # type: ignore[index]
        return None
    (a, end_a, total), (b, end_b, _) = chains   # type: ignore[misc]
    stop = nodes.index(total)
    if (total.kwargs or len(total.args) != 2 or set(total.args) != {end_a, end_b} or not (a or b)
            or set(nodes[i:stop]) != {node for _, node in a + b}):
        return None
    body, shortcut = (a, b) if len(a) >= len(b) else (b, a)
    return [e for e, _ in body], [e for e, _ in shortcut], stop


def _chain_to_sum(model: nn.Module, x: fx.Node, start: fx.Node, sizes: Mapping[fx.Node, fx.Node]
                  ) -> tuple[list[tuple[tuple[nn.Module, str | None], fx.Node]], fx.Node, fx.Node] | None:
    """(the elements of the chain from x that begins at ``start``, each with its node; the
    chain's last node (x when ``start`` is the sum itself); the sum it ends in), or None."""
    elements: list[tuple[tuple[nn.Module, str | None], fx.Node]] = []
    previous, node = x, start
    while not (node.op == "call_function" and node.target in _SUMS):
        element = _element(model, node, previous, sizes)
        users = set(node.users).difference(sizes)
        if element is None or len(users) != 1:
            return None
        elements.append((element, node))
        previous, (node,) = node, users
    return elements, previous, node


class Residual(nn.Module):
    """body(x) + shortcut(x): a residual unit of a traced chain, the shortcut empty for x itself;
    both hold the model's own modules (and stand-ins), so their hooks run."""

    def __init__(self, body: Sequence[nn.Module], shortcut: Sequence[nn.Module] = ()):
        super().__init__()
        self.body = nn.ModuleList(body)
        self.shortcut = nn.ModuleList(shortcut)

    def forward(self, x: Tensor) -> Tensor:
        return _apply(self.body, x) + _apply(self.shortcut, x)


def _apply(modules: nn.ModuleList, x: Tensor) -> Tensor:
    for module in modules:
        x = module(x)
    return x


def _sequence(model: nn.Module, modules: list[nn.Module], paths: list[str | None],
              scopes: list[frozenset[str]]) -> ModuleSequence:
    """The sequence, with each module's tensors named as ``model`` lists them."""
    listed = {id(t): name for name, t in [*model.named_parameters(), *model.named_buffers()]}
    names = [{own: listed[id(t)] for own, t in [*m.named_parameters(remove_duplicate=False),
                                                 *m.named_buffers(remove_duplicate=False)]}
             for m in modules]
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
