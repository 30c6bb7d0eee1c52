"""What a section of the validation report is, and what every section is given.

A section computes its numbers (and draws its figures) in ``compute(ctx)``, then turns the
result into markdown in ``render(result, ctx)``; ``headlines(result, ctx)`` may add lines to the
report's "Key results". Sections run in the order of :data:`~.report.SECTIONS`; a section may
read the result of an earlier one from ``ctx.results[key]`` and then names that key in
``needs`` (so that ``--sections`` runs it first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formatting import Timer


@dataclass
class Context:
    """Shared by every section: where figures go, the stage timer, earlier sections' results."""

    fig_dir: Path
    timer: Timer = field(default_factory=Timer)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def rel(self) -> str:
        """The figure directory as linked from the report (relative to validation.md)."""
        return self.fig_dir.name


def no_headlines(result: Any, ctx: Context) -> list[str]:
    """The default of :attr:`Section.headlines`: nothing in "Key results"."""
    return []


@dataclass(frozen=True)
class Section:
    """One part of the report: ``key`` names its result in ``Context.results``; ``needs``: the
    keys of the earlier sections whose results ``compute`` reads."""

    key: str
    compute: Callable[[Context], Any]
    render: Callable[[Any, Context], str]
    headlines: Callable[[Any, Context], list[str]] = no_headlines
    needs: tuple[str, ...] = ()
