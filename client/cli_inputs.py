"""What the ``intermod`` commands read: data files, model specs, graphs and memberships."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def load_data(path: str, tensor: str = "") -> Any:
    """A .npy (no pickles) or .safetensors file as a torch tensor."""
    import torch
    from safetensors.torch import load_file
    p = Path(path)
    if p.suffix == ".npy":
        return torch.from_numpy(np.load(p, allow_pickle=False))
    tensors = load_file(p)
    if not tensor:
        if len(tensors) != 1:
            raise ValueError(f"{path} holds {sorted(tensors)}; choose one with --data-tensor")
        tensor = next(iter(tensors))
    return tensors[tensor]


def local_model(args: argparse.Namespace) -> Any:
    from intermod.server.model_spec import SpecError, load_model
    from safetensors.torch import load_file
    if not (args.spec and args.weights and args.data):
        raise ValueError("--local needs --spec, --weights and --data files")
    try:
        return load_model(json.loads(Path(args.spec).read_text()), load_file(args.weights))
    except SpecError as exc:
        raise ValueError(f"{args.spec}: {exc}") from None


def remote_model(args: argparse.Namespace, client: Any) -> str:
    if args.model:
        return args.model
    if not (args.spec and args.weights):
        raise ValueError("give --model ID, or --spec and --weights")
    spec = json.loads(Path(args.spec).read_text())
    return client.register_model(spec, args.weights, name=Path(args.spec).stem).id


def remote_data(args: argparse.Namespace) -> Path | str | None:
    """The data file to upload, or the id of a tensor set on the server, or None."""
    if args.data:
        path = Path(args.data)
        if not path.is_file():
            raise FileNotFoundError(f"--data {args.data}: no such file")
        return path
    return args.data_id or None


def load_graph(path: str) -> Any:
    from intermod import analysis as ia
    return ia.InteractionGraph.from_json(Path(path))


def read_membership(path: str) -> np.ndarray:
    """Module ids from a .npy, a JSON list or a partition JSON ({"membership": [...]})."""
    p = Path(path)
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False).astype(np.int64)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--membership {path}: not JSON ({exc})") from None
    if isinstance(data, dict):
        if "membership" not in data:
            raise ValueError(f"--membership {path}: a JSON object needs a 'membership' list (a "
                             f"partition JSON); this one has keys {sorted(data)[:10]}")
        data = data["membership"]
    if not (isinstance(data, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                           for v in data)):
        raise ValueError(f"--membership {path}: expected a list of integer module ids, got "
                         f"{str(data)[:80]}")
    return np.asarray(data, dtype=np.int64)
