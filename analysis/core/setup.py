"""Setting up a pass over the data: the device, the model cut at its node layers, batching,
progress and the per-section colourings (shared by the basis and the edges)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .colouring import Colouring, section_colouring
from .distributed import rank_world, shard
from .inputs import Inputs, batch_size_of, batch_to, count_batches, iter_batches, position_mask, resolve_device
from .jacobians import DEFAULT_MAX_MEMORY, ProbeDraw
from .layout import LayoutSpec
from .nodes import NodeModel, OutputFn
from .progress import Callback, Progress


@dataclass
class Setup:
    net: NodeModel
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    progress: Progress
    seed: int
    n_batches: int | None
    inputs: Inputs = field(repr=False)
    structured: bool = True            # closed forms where a section allows (core/structured.py)
    max_memory: int = DEFAULT_MAX_MEMORY   # bytes of temporaries per chunk
    colourings: dict[tuple[int, tuple[int, ...]], Colouring | None] = field(default_factory=dict, repr=False)

    def colouring(self, j: int, in_shape: tuple[int, ...] | torch.Size) -> Colouring | None:
        """Section j's coloured output positions for inputs of ``in_shape`` (with ``structured``;
        :mod:`~intermod.analysis.core.colouring`), computed once per shape."""
        key = (j, tuple(in_shape[1:]))
        if key not in self.colourings:
            self.colourings[key] = (section_colouring(self.net, j, tuple(in_shape), self.device)
                                    if self.structured else None)
        return self.colourings[key]

    def batches(self, stage: str, stream: int = 0) -> Iterator[tuple[Any, Tensor | None, ProbeDraw]]:
        """This process's batches (all of them without a process group), on the device, with the
        position mask and the probe draw of each (keyed by the global index of its samples)."""
        rank, world = rank_world()
        total = None if self.n_batches is None else len(range(rank, self.n_batches, world))
        for first, batch in self.progress.track(shard(_numbered(iter_batches(self.inputs, self.batch_size))),
                                                stage, total):
            batch = batch_to(batch, self.device, self.dtype)
            yield batch, position_mask(batch), ProbeDraw(self.seed, stream, first)


def _numbered(batches: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """(global index of the first sample, batch) for every batch."""
    first = 0
    for batch in batches:
        yield first, batch
        first += batch_size_of(batch)


def prepare(model: nn.Module, inputs: Inputs, layers: Sequence[str], *, output_fn: OutputFn | None,
            include_bias: bool, dtype: torch.dtype, batch_size: int, device: str | torch.device,
            seed: int, progress: bool, callback: Callback | None, layout: LayoutSpec = None,
            structured: bool = True, max_memory: int = DEFAULT_MAX_MEMORY) -> Setup:
    """Resolve the device, cut the model at ``layers`` (read with ``layout``) and set up
    batching and progress."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    dev = resolve_device(device)
    first = next(iter_batches(inputs, batch_size), None)
    if first is None:
        raise ValueError("inputs: no data")
    net = NodeModel(model, layers, batch_to(first, dev, dtype), output_fn=output_fn,
                    include_bias=include_bias, dtype=dtype, device=dev, layout=layout)
    return Setup(net, dev, dtype, batch_size, Progress(progress, callback), seed,
                  count_batches(inputs, batch_size), inputs, bool(structured), max_memory)
