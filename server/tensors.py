"""Reading uploaded tensor files safely: safetensors or .npy, never pickles.

Every tensor is checked to be a finite real array; a .npy upload is re-stored as a
safetensors file holding one tensor named ``data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
from safetensors import safe_open

from .errors import InvalidArgument

NPY_TENSOR = "data"
_REAL_KINDS = "biuf"


def _check_array(name: str, arr: np.ndarray, field: str) -> None:
    if arr.dtype.kind not in _REAL_KINDS:
        raise InvalidArgument(field, f"tensor {name!r} has unsupported dtype {arr.dtype}; "
                                     "use a real numeric dtype")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidArgument(field, f"tensor {name!r} contains NaN or Inf")


def read_upload(path: Path, fmt: str, field: str = "chunk") -> dict[str, np.ndarray]:
    """Parse an uploaded file into named numpy arrays.

    fmt: ``"safetensors"`` or ``"npy"`` (``numpy.load(allow_pickle=False)``).
    Raises InvalidArgument(field) for a malformed file, a non-numeric dtype or NaN/Inf.
    """
    try:
        if fmt == "npy":
            arr = np.load(path, allow_pickle=False)
            if not isinstance(arr, np.ndarray):
                raise ValueError("not a single .npy array (an .npz archive?)")
            arrays = {NPY_TENSOR: arr}
        else:
            arrays = safetensors.numpy.load_file(path)
    except Exception as exc:
        raise InvalidArgument(field, f"malformed {fmt} file: {exc}") from exc
    if not arrays:
        raise InvalidArgument(field, f"the {fmt} file holds no tensors")
    for name, arr in arrays.items():
        _check_array(name, arr, field)
    return arrays


def save_tensors(arrays: dict[str, np.ndarray], f) -> None:
    """Write arrays as a safetensors file to an open binary file."""
    f.write(safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def load_tensor(path: Path, name: str) -> torch.Tensor:
    """One tensor of a stored tensor set, as a torch tensor."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


def load_all(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a stored tensor set (e.g. model weights)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict


def numel(path: Path) -> dict[str, int]:
    """Element count of every tensor of a stored set, from the file header (nothing loaded)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: int(np.prod(f.get_slice(k).get_shape(), dtype=np.int64))
                for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
