"""Formatting for the validation report: wall-time stages, numbers and markdown tables."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .recovery import SweepRow


class Timer:
    """Wall time per named stage (seconds, summed over repeated stages)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for the report: NaN/None as '–', small or large floats in scientific notation."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x != 0 and (abs(x) < 10 ** -(digits - 1) or abs(x) >= 1e5):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; cells that are not strings go through :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def sweep_cells(row: SweepRow | None) -> list[Any]:
    """Table cells of one sweep point: ARI, NMI, modules, γ, coverage ('–' without a point)."""
    if row is None:
        return ["–"] * 5
    return [row.ari, row.nmi, row.n_modules, fmt(row.resolution), row.coverage]


def ari_cells(row: SweepRow | None) -> list[Any]:
    """Table cells of one sweep point: ARI, modules, coverage ('–' without a point)."""
    return [row.ari, row.n_modules, row.coverage] if row else ["–"] * 3
