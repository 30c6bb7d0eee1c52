"""Batches of model inputs: tensors, mappings of tensors (keyword arguments) or data loaders.

A *batch* is a tensor (``model(batch)``) or a mapping of tensors (``model(**batch)``). Data
never has to fit in memory at once: pass a re-iterable of batches (a ``DataLoader``). Numpy
arrays are accepted wherever a tensor is (as scikit-learn accepts array-likes) and become
tensors sharing their memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .layout import Layout

Batch = Tensor | Mapping[str, Any]
Inputs = Tensor | Mapping[str, Any] | Iterable[Any]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when present, else CPU; otherwise the device named. ValueError
    naming the problem for a name torch does not parse or a CUDA device torch cannot see (where
    torch itself would fail later, deep in a forward pass)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err}); use 'auto', 'cpu', "
                         "'cuda' or 'cuda:N'") from err
    if dev.type == "cuda":
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= seen:
            raise ValueError(f"device={device!r}: torch sees {seen} CUDA device(s) (torch.cuda.is_available() "
                             f"is {torch.cuda.is_available()}); use device='auto' or 'cpu'")
    return dev


def _leading_dim(mapping: Mapping[str, Any]) -> int:
    dims = {v.shape[0] for v in mapping.values() if isinstance(v, Tensor) and v.ndim > 0}
    if len(dims) != 1:
        raise ValueError(f"inputs mapping: tensors must share their first (batch) dimension, got {sorted(dims)}")
    return dims.pop()


def _tensors(value: Any) -> Any:
    """A numpy array as a tensor (memory shared; a non-writable or non-contiguous array is
    copied), a mapping with its arrays converted; anything else unchanged."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"inputs: numpy arrays must be numeric, got dtype {value.dtype}")
        if not (value.flags.writeable and value.flags.c_contiguous):
            value = np.array(value, order="C")
        return torch.from_numpy(value)
    if isinstance(value, Mapping):
        return {k: _tensors(v) if isinstance(v, np.ndarray) else v for k, v in value.items()}
    return value


def iter_batches(inputs: Inputs, batch_size: int) -> Iterator[Batch]:
    """Yield batches from ``inputs``.

    A tensor or numpy array (n, ...), or a mapping of them, is split along dim 0 into chunks
    of ``batch_size``; any other iterable is taken batch by batch (a tuple/list batch, as a
    ``DataLoader`` over ``(x, y)`` yields, uses its first element as the model input), its
    numpy batches converted to tensors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = _tensors(inputs)
    if isinstance(inputs, Tensor):
        if inputs.ndim == 0:
            raise ValueError("inputs: expected a tensor with a batch dimension, got a scalar")
        yield from inputs.split(batch_size)
    elif isinstance(inputs, Mapping):
        n = _leading_dim(inputs)
        for i in range(0, n, batch_size):
            yield slice_batch(inputs, i, i + batch_size)
    elif isinstance(inputs, Iterator):
        raise TypeError("inputs is a one-shot iterator, but intermod makes several passes over the "
                        "data: pass a tensor, a mapping of tensors or a re-iterable such as a DataLoader")
    elif isinstance(inputs, Iterable):
        for batch in inputs:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            batch = _tensors(batch)
            if not isinstance(batch, (Tensor, Mapping)):
                raise TypeError(f"inputs: a batch must be a tensor, a numpy array or a mapping of them, got {type(batch).__name__}")
            yield batch
    else:
        raise TypeError(f"inputs must be a tensor, a mapping of tensors or an iterable of batches, "
                        f"got {type(inputs).__name__}")


def slice_batch(batch: Batch, start: int, stop: int | None = None) -> Batch:
    """Samples start … stop − 1 of a batch (a tensor, or a mapping whose tensors with a batch
    dimension are sliced and other values kept)."""
    if isinstance(batch, Tensor):
        return batch[start:stop]
    return {k: (v[start:stop] if isinstance(v, Tensor) and v.ndim > 0 else v) for k, v in batch.items()}


def sample_shape(batch: Batch) -> tuple:
    """The shape of one sample of a batch: every batched tensor's shape past dim 0 (a tensor's,
    or a mapping's by key). Batches of equal sample shape cost the same per sample."""
    if isinstance(batch, Tensor):
        return tuple(batch.shape[1:])
    return tuple((k, tuple(v.shape[1:])) for k, v in sorted(batch.items()) if isinstance(v, Tensor) and v.ndim > 0)


def count_batches(inputs: Inputs, batch_size: int) -> int | None:
    """Number of batches ``iter_batches`` will yield, when known without iterating."""
    if isinstance(inputs, (Tensor, np.ndarray)):
        return -(-inputs.shape[0] // batch_size)
    if isinstance(inputs, Mapping):
        return -(-_leading_dim(_tensors(inputs)) // batch_size)
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError:
        return None


def batch_to(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """Move a batch to ``device``, detached from any autograd graph it came with (the analysis
    makes its own leaves); floating tensors are cast to ``dtype`` (integer ids are kept)."""
    def move(v: Any) -> Any:
        if not isinstance(v, Tensor):
            return v
        return v.detach().to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)

    if isinstance(batch, Tensor):
        return move(batch)
    return {k: move(v) for k, v in batch.items()}


def batch_size_of(batch: Batch) -> int:
    return batch.shape[0] if isinstance(batch, Tensor) else _leading_dim(batch)


def position_mask(batch: Batch) -> Tensor | None:
    """The (B, P) mask of real (non-padded) positions, from an ``attention_mask`` entry if any."""
    if isinstance(batch, Mapping) and isinstance(batch.get("attention_mask"), Tensor):
        return batch["attention_mask"] != 0
    return None


def as_samples(act: Tensor, mask: Tensor | None, layout: Layout | str | None = None) -> tuple[Tensor, Tensor]:
    """View a node activation as (B, P, d) samples with (B, P) weights in {0, 1}.

    ``layout`` (a :class:`~intermod.analysis.core.layout.Layout` or its name) says which axes
    are positions and features; without one, (B, d) is ``"features"`` and anything larger is
    ``"tokens"`` (features last). Node layers inside intermod always use the layout resolved
    for them (``NodeModel.layouts``). The position mask applies when the activation has exactly
    one position axis of the mask's length.
    """
    if layout is None:
        layout = "features" if act.ndim <= 2 else "tokens"
    return (layout if isinstance(layout, Layout) else Layout(layout)).samples(act, mask)


def add_padded(a: Tensor | int, b: Tensor) -> Tensor:
    """a + b over the last axis (positions), the shorter one padded with zeros: per-position
    sums over batches whose sequences have different lengths. ``a`` may be 0 (nothing yet)."""
    if not isinstance(a, Tensor):
        return a + b
    n = max(a.shape[-1], b.shape[-1])
    return nn.functional.pad(a, (0, n - a.shape[-1])) + nn.functional.pad(b, (0, n - b.shape[-1]))
