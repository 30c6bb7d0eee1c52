"""The server's models: client specs (spec + weights), operator models and built-in examples.

Operator models and examples are Python objects the operator chose to run; client models are
only ever built from the declarative spec (:mod:`.model_spec`) and safetensors weights.
Examples are listed by name and loaded on first use.
"""

from __future__ import annotations

import copy
import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from . import model_spec, tensors
from .errors import InvalidArgument, NotFound
from .storage import Store, new_id

SPEC, OPERATOR, EXAMPLE = "spec", "operator", "example"


@dataclass
class LoadedModel:
    """A model ready to run: the module, its own inputs (if any) and default node layers."""

    model: nn.Module
    inputs: Any = None
    layers: list[str] = field(default_factory=list)
    example: Any = None  # the library's Example, for ground truth


@dataclass
class ModelEntry:
    id: str
    name: str
    source: str
    load: Callable[[], LoadedModel]
    spec: dict | None = None
    description: str = ""
    n_parameters: int = 0
    _cache: LoadedModel | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cached(self) -> LoadedModel | None:
        """The loaded model if it has been loaded already (listing never loads models)."""
        return self._cache

    def loaded(self) -> LoadedModel:
        """The model (loaded once, then cached); callers get their own copy of the module."""
        with self._lock:
            if self._cache is None:
                self._cache = self.load()
                self.n_parameters = sum(p.numel() for p in self._cache.model.parameters())
            cached = self._cache
        return LoadedModel(copy.deepcopy(cached.model), cached.inputs, list(cached.layers),
                           cached.example)


def _from_example_like(obj: Any) -> LoadedModel:
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval())
    return LoadedModel(obj.model.eval(), getattr(obj, "inputs", None),
                       list(getattr(obj, "layers", []) or []), obj)


def _example_names() -> list[str]:
    """Names of intermod.analysis.examples, or [] while that package is not installed."""
    try:
        from intermod.analysis import examples
        return list(examples.names())
    except (ImportError, AttributeError):
        return []


def _load_example(name: str) -> LoadedModel:
    from intermod.analysis import examples
    return _from_example_like(examples.load(name))


def _load_spec(spec: dict, weights_path: Path) -> LoadedModel:
    """A client model: a declarative spec, or {"hf_config": config.json} (Hugging Face)."""
    if "hf_config" in spec:
        from intermod.analysis.models import hf
        return LoadedModel(hf.model_from_config(spec["hf_config"], weights_path))
    return LoadedModel(model_spec.load_model(spec, tensors.load_all(weights_path)))


def _operator_factory(target: str) -> tuple[str, Callable[[], Any]]:
    """Parse ``[name=]module:function``."""
    name, _, path = target.rpartition("=")
    module_name, _, func = path.partition(":")
    if not module_name or not func:
        raise ValueError(f"operator model {target!r}: expected [name=]module:function")
    factory = getattr(importlib.import_module(module_name), func)
    return name or func, factory


class ModelRegistry:
    """All models the server can run, by id."""

    def __init__(self, store: Store, operator_models: tuple[str, ...] = ()) -> None:
        self.store = store
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        for rec in store.models():
            self._add_spec_entry(rec)
        for target in operator_models:
            name, factory = _operator_factory(target)
            self.add_operator(name, factory)

    def add_operator(self, name: str, factory: Callable[[], Any], description: str = "") -> None:
        """Register an operator model: factory() returns an nn.Module or an Example-like
        object (fields model, inputs, layers)."""
        with self._lock:
            self._entries[name] = ModelEntry(
                name, name, OPERATOR, lambda: _from_example_like(factory()),
                description=description or (factory.__doc__ or "").strip().split("\n")[0])

    def register_hf(self, name: str, config: dict, weights_path: Path) -> ModelEntry:
        """Validate a Hugging Face config + safetensors weights (builds the model, no remote
        code) and record it. Blocking."""
        from intermod.analysis.models import hf
        try:
            model = hf.model_from_config(config, weights_path)
        except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
            # RuntimeError: weights that do not fit the architecture (size mismatch)
            raise InvalidArgument("hf_config_json", f"{type(exc).__name__}: {exc}") from None
        rec = {"id": new_id("m"), "name": name, "spec": {"hf_config": config},
               "weights_path": str(weights_path),
               "n_parameters": sum(p.numel() for p in model.parameters()), "created": time.time()}
        self.store.add_model(rec)
        return self._add_spec_entry(rec)

    def _add_spec_entry(self, rec: dict) -> ModelEntry:
        hf_config = rec["spec"].get("hf_config")
        entry = ModelEntry(rec["id"], rec["name"], SPEC,
                           lambda: _load_spec(rec["spec"], Path(rec["weights_path"])),
                           spec=None if hf_config else rec["spec"], n_parameters=rec["n_parameters"],
                           description=f"Hugging Face {hf_config.get('model_type')} model" if hf_config else "")
        with self._lock:
            self._entries[rec["id"]] = entry
        return entry

    def _examples(self) -> None:
        with self._lock:
            for name in _example_names():
                if name not in self._entries:
                    self._entries[name] = ModelEntry(
                        name, name, EXAMPLE, lambda n=name: _load_example(n),
                        description=f"built-in example {name!r}")

    def list(self) -> list[ModelEntry]:
        self._examples()
        with self._lock:
            return list(self._entries.values())

    def get(self, model_id: str) -> ModelEntry:
        if not model_id:
            raise InvalidArgument("model_id", "required")
        self._examples()
        with self._lock:
            entry = self._entries.get(model_id)
        if entry is None:
            raise NotFound(f"no model {model_id!r}")
        return entry

    def register_spec(self, name: str, spec: dict, weights_path: Path) -> ModelEntry:
        """Validate spec + weights (builds the model) and record it. Blocking."""
        try:
            model = model_spec.load_model(spec, tensors.load_all(weights_path))
        except model_spec.SpecError as exc:
            raise InvalidArgument(exc.field, exc.message) from None
        rec = {"id": new_id("m"), "name": name, "spec": spec, "weights_path": str(weights_path),
               "n_parameters": sum(p.numel() for p in model.parameters()),
               "created": time.time()}
        self.store.add_model(rec)
        return self._add_spec_entry(rec)
