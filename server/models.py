"""The server's models: client specs (spec + weights), operator models and built-in examples.

Operator models and examples are Python objects the operator chose to run; client models are
only ever built from the declarative spec (:mod:`.model_spec`) and safetensors weights.
Examples are listed by name and loaded on first use.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from . import model_spec, tensors
from .errors import InvalidArgument, NotFound, echo
from .storage import Store, new_id

SPEC, OPERATOR, EXAMPLE = "spec", "operator", "example"
#: Config keys that set a Hugging Face model's depth, and the deepest config accepted (even
#: on the meta device, every layer is a Python object).
HF_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
MAX_HF_DEPTH = 1024


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
    #: Called after every load or use (the registry's LRU of loaded models).
    on_use: Callable[[ModelEntry], None] | None = None
    _cache: LoadedModel | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def unload(self) -> None:
        """Drop the loaded model (it is loaded again on next use)."""
        with self._lock:
            self._cache = None

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
        if self.on_use is not None:
            self.on_use(self)
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


def content_key(spec: dict, weights_sha256: str) -> str:
    """Identity of a client model: its spec (canonical JSON) and its weights' SHA-256."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + weights_sha256.encode()
                          ).hexdigest()


def _check_parameters(needed: int, weights_path: Path, limit: int, field: str,
                      weights_field: str) -> None:
    """The model's parameter count against the server's limit (`field`) and the uploaded
    weights (`weights_field`), before anything is allocated (sizes from the file header)."""
    if needed > limit:
        raise InvalidArgument(field, f"the model has {needed:,} parameters; the server's limit "
                                     f"is {limit:,}")
    held = sum(tensors.numel(weights_path).values())
    if needed > held:
        raise InvalidArgument(weights_field, f"the model needs {needed:,} parameters but the weights "
                                     f"hold {held:,} values")


def hf_parameter_count(config: dict) -> int:
    """Parameters of the bare model a Hugging Face config describes, counted on the meta
    device (no memory, no initialisation); without the optional pooling head."""
    import transformers
    from intermod.analysis.models import hf
    for key in HF_DEPTH_KEYS:
        depth = config.get(key)
        if isinstance(depth, int) and not 0 <= depth <= MAX_HF_DEPTH:
            raise ValueError(f"{key} = {depth} is outside 0..{MAX_HF_DEPTH}")
    if "auto_map" in config:
        raise ValueError("config asks for custom model code (auto_map); refused")
    family = hf._family(str(config.get("model_type")))
    model_cls = getattr(transformers, family.model_class)
    cfg = model_cls.config_class.from_dict(dict(config), attn_implementation="eager")
    kw = {} if family.pooler is None else {"add_pooling_layer": False}
    with torch.device("meta"):
        model = model_cls(cfg, **kw)
    return sum(p.numel() for p in model.parameters())


#: What building a Hugging Face model from a client's config and weights may raise.
_HF_ERRORS = (ValueError, KeyError, TypeError, RuntimeError, OSError, OverflowError,
              SafetensorError)


class ModelRegistry:
    """All models the server can run, by id; at most `cache_size` of them loaded at a time."""

    def __init__(self, store: Store, operator_models: tuple[str, ...] = (),
                 cache_size: int = 4) -> None:
        self.store = store
        self.cache_size = cache_size
        self._entries: dict[str, ModelEntry] = {}
        self._by_content: dict[str, str] = {}   # content_key -> model id
        self._loaded: OrderedDict[str, ModelEntry] = OrderedDict()
        self._lock = threading.Lock()
        for rec in store.models():
            self._add_spec_entry(rec)
            weights = store.tensor_set(Path(rec["weights_path"]).stem)
            if weights is not None:
                self._by_content[content_key(rec["spec"], weights["sha256"])] = rec["id"]
        for target in operator_models:
            name, factory = _operator_factory(target)
            self.add_operator(name, factory)

    def _used(self, entry: ModelEntry) -> None:
        """LRU of loaded models: unload the least recently used beyond cache_size."""
        with self._lock:
            self._loaded[entry.id] = entry
            self._loaded.move_to_end(entry.id)
            evicted = []
            while len(self._loaded) > self.cache_size:
                evicted.append(self._loaded.popitem(last=False)[1])
        for old in evicted:
            old.unload()

    def _entry(self, *args: Any, **kw: Any) -> ModelEntry:
        return ModelEntry(*args, **kw, on_use=self._used)

    def add_operator(self, name: str, factory: Callable[[], Any], description: str = "") -> None:
        """Register an operator model: factory() returns an nn.Module or an Example-like
        object (fields model, inputs, layers)."""
        with self._lock:
            self._entries[name] = self._entry(
                name, name, OPERATOR, lambda: _from_example_like(factory()),
                description=description or (factory.__doc__ or "").strip().split("\n")[0])

    def _existing(self, spec: dict, weights: dict) -> ModelEntry | None:
        with self._lock:
            model_id = self._by_content.get(content_key(spec, weights["sha256"]))
            return self._entries.get(model_id) if model_id else None

    def _record(self, name: str, spec: dict, weights: dict, n_parameters: int) -> ModelEntry:
        rec = {"id": new_id("m"), "name": name, "spec": spec, "weights_path": weights["path"],
               "n_parameters": n_parameters, "created": time.time()}
        self.store.add_model(rec)
        entry = self._add_spec_entry(rec)
        with self._lock:
            self._by_content[content_key(spec, weights["sha256"])] = rec["id"]
        return entry

    def register_hf(self, name: str, config: dict, weights: dict,
                    max_parameters: int) -> ModelEntry:
        """Validate a Hugging Face config + safetensors weights (their tensor-set record) and
        record the model, once per content: the same config and weights give the same model.
        The parameter count is checked on the meta device before the model is built. Blocking."""
        from intermod.analysis.models import hf
        spec = {"hf_config": config}
        existing = self._existing(spec, weights)
        if existing is not None:
            return existing
        try:
            needed = hf_parameter_count(config)
        except _HF_ERRORS as exc:
            raise InvalidArgument("hf_config_json", f"{type(exc).__name__}: {exc}") from None
        _check_parameters(needed, Path(weights["path"]), max_parameters, "hf_config_json",
                          "hf_config_json")
        try:
            model = hf.model_from_config(config, Path(weights["path"]))
        except _HF_ERRORS as exc:
            # RuntimeError: weights that do not fit the architecture (size mismatch)
            raise InvalidArgument("hf_config_json", f"{type(exc).__name__}: {exc}") from None
        return self._record(name, spec, weights, sum(p.numel() for p in model.parameters()))

    def _add_spec_entry(self, rec: dict) -> ModelEntry:
        hf_config = rec["spec"].get("hf_config")
        entry = self._entry(rec["id"], rec["name"], SPEC,
                            lambda: _load_spec(rec["spec"], Path(rec["weights_path"])),
                            spec=None if hf_config else rec["spec"],
                            n_parameters=rec["n_parameters"],
                            description=f"Hugging Face {hf_config.get('model_type')} model"
                            if hf_config else "")
        with self._lock:
            self._entries[rec["id"]] = entry
        return entry

    def _examples(self) -> None:
        with self._lock:
            for name in _example_names():
                if name not in self._entries:
                    self._entries[name] = self._entry(
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
            raise NotFound(f"no model {echo(model_id)}")
        return entry

    def register_spec(self, name: str, spec: dict, weights: dict,
                      max_parameters: int) -> ModelEntry:
        """Validate spec + weights (their tensor-set record) and record the model, once per
        content. The spec is built on the meta device and its parameters counted before the
        weights are loaded. Blocking."""
        existing = self._existing(spec, weights)
        if existing is not None:
            return existing
        try:
            needed = sum(p.numel() for p in model_spec.build_model(spec).parameters())
            _check_parameters(needed, Path(weights["path"]), max_parameters, "spec", "weights")
            model = model_spec.load_model(spec, tensors.load_all(Path(weights["path"])))
        except model_spec.SpecError as exc:
            raise InvalidArgument(exc.field, exc.message) from None
        return self._record(name, spec, weights, sum(p.numel() for p in model.parameters()))
