"""Weights of trained examples: shipped with the package, cached, or trained on demand.

A trained example is identified by its training configuration (a JSON-able dict); its key is
the first 16 hex digits of the SHA-256 of the sorted JSON. Lookup order:

1. ``analysis/examples/data/<name>.safetensors`` shipped with the package, if its stored key
   matches (a fresh clone needs no training);
2. ``$INTERMOD_CACHE/<name>-<key>.safetensors`` (default ``~/.cache/intermod``);
3. train, then write the cache file atomically (write a temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

__all__ = ["DATA_DIR", "cache_dir", "config_key", "load_or_train", "save_weights"]

DATA_DIR = Path(__file__).resolve().parent / "data"


def cache_dir() -> Path:
    """``$INTERMOD_CACHE`` or ``~/.cache/intermod``."""
    return Path(os.environ.get("INTERMOD_CACHE", Path.home() / ".cache" / "intermod"))


def config_key(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit key of a training configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def save_weights(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                 info: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically with the config key, config and info as metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": config_key(config), "config": json.dumps(config, sort_keys=True),
            "info": json.dumps(info, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("key") != key:
        return None
    return load_file(str(path)), json.loads(meta.get("info", "{}"))


def load_or_train(
    name: str,
    config: dict[str, Any],
    train: Callable[[dict[str, Any]], tuple[dict[str, torch.Tensor], dict[str, Any]]],
    retrain: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Weights for ``config``: (state dict, training info, source) with source one of
    ``"shipped"``, ``"cache"``, ``"trained"``. ``retrain`` skips both lookups."""
    key = config_key(config)
    cached = cache_dir() / f"{name}-{key}.safetensors"
    if not retrain:
        for source, path in (("shipped", DATA_DIR / f"{name}.safetensors"), ("cache", cached)):
            found = _read(path, key)
            if found is not None:
                return found[0], found[1], source
    state, info = train(config)
    try:
        save_weights(cached, state, config, info)
    except OSError:
        pass  # a read-only home is no reason to fail: the weights are in memory
    return state, info, "trained"
