"""The validation report: ``make validate`` = ``python -m intermod.analysis.validation``.

Runs every built-in example through the neuron, PCA and interaction bases (both Jacobian
targets), measures recovery of the known modules, interaction sparsity, the App. A and §6.2
checks, the dependence on ε, finite-sample robustness on ``planted`` with and without the
re-rotation remedy, the transformers and the module reports of two_tasks and digits, then
writes ``docs/validation.md`` and the plots under ``docs/validation/``. Every number in the report is computed here.

**Adding a section.** A section is one module of this package with

- ``compute(ctx: Context) -> result``: computes its numbers (and draws its figures into
  ``ctx.fig_dir``, timing its stages with ``ctx.timer(stage)``);
- ``render(result, ctx) -> str``: its markdown, starting with a ``## `` heading, figures linked
  as ``f"{ctx.rel}/name.png"``;
- optionally ``headlines(result, ctx) -> list[str]``: bullet lines for "Key results";

and a ``SECTION = Section(key, compute, render[, headlines][, needs=(...)])`` at its end,
appended to :data:`SECTIONS` below. Sections run in that order; a later one reads an earlier
one's result as ``ctx.results[key]`` (e.g. ``ctx.results["examples"]``) and lists that key in
``needs``. Shared parameters (ε, the γ grid, the bases) are in :mod:`.settings`, number and table
formatting in :mod:`.formatting`. To run one section on its own (and what it needs), e.g. while
writing it: ``python -m intermod.analysis.validation --sections theory --out /tmp/report``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch

from . import ablation, bases, cnn, drawings, epsilon, reports, robustness, theory, transformers
from .formatting import fmt, table
from .section import Context, Section

SECTIONS: tuple[Section, ...] = (
    bases.SECTION,               # What was run, Examples, Recovery and sparsity per basis
    epsilon.NOISE_SECTION,       # ε chosen without the ground truth
    theory.SECTION,              # App. A and §6.2 invariance
    epsilon.DEPENDENCE_SECTION,  # Dependence on ε
    robustness.SECTION,          # Finite-sample robustness (planted)
    ablation.SECTION,            # Ablations: truth-free pipeline, cut vs random, curves, effects
    ablation.FINITE_SECTION,     # Finite-sample study, truth-free
    drawings.SECTION,            # Modules found
    cnn.SECTION,                 # digits_cnn next to the digits MLP
    reports.SECTION,             # Module reports (two_tasks, digits)
    transformers.SECTION,        # MiniLM and modular addition
)

CAVEATS = """## What these numbers do and do not support

- They are single runs (one seed per network, one data draw, one Leiden seed): differences in
  the second decimal are not evidence.
- *Best* ARI uses the ground truth to pick γ; only the *plateau* columns describe what a user
  without labels would get, and the plateau rule is a heuristic of this report, not part of
  the paper.
- ARI is computed over active nodes only; a basis or an ε that leaves many directions below √ε
  can score well on the remainder: read it with the coverage column.
- The ground truth of `two_tasks` is by variance: a direction that both tasks move gets the
  label of the larger share, so a trained dense network need not have an exactly recoverable
  partition; `planted` is the only example whose modules are exact.
- The deep-linear and invariance checks are numerical identities of the method (expected at
  float64 rounding), not empirical findings about trained networks.
- The remedies are tested on one planted network with Gaussian inputs; ICA cannot separate
  Gaussian coordinates, so `rerotate_degenerate` leaves the input layer as computed there
  (its noise gate refuses rotations that do not lower dependence).
"""


def select(keys: list[str], sections: tuple[Section, ...] = SECTIONS) -> tuple[Section, ...]:
    """The sections named in ``keys`` and, recursively, those they need, in report order."""
    by_key = {s.key: s for s in sections}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; the sections are {list(by_key)}")
    wanted: set[str] = set()
    todo = list(keys)
    while todo:
        key = todo.pop()
        if key not in wanted:
            wanted.add(key)
            todo.extend(by_key[key].needs)
    return tuple(s for s in sections if s.key in wanted)


def run_sections(ctx: Context, sections: tuple[Section, ...] = SECTIONS) -> None:
    """``compute`` of every section in order, each result stored in ``ctx.results[key]``."""
    for section in sections:
        t0 = time.perf_counter()
        ctx.results[section.key] = section.compute(ctx)
        print(f"[validate] {section.key}: {time.perf_counter() - t0:.1f} s", flush=True)


def render_report(ctx: Context, total: float, sections: tuple[Section, ...] = SECTIONS) -> str:
    """The markdown report: header, key results, every section, wall time per stage, caveats."""
    headlines = [line for s in sections for line in s.headlines(ctx.results[s.key], ctx)]
    parts = [
        "# Validation report\n",
        f"Generated by `make validate` (`python -m intermod.analysis.validation`) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores visible, {torch.get_num_threads()} torch threads; "
        f"total wall time {fmt(total, 1)} s. Every number below is computed by that command.\n",
        "\n".join(["## Key results\n", *headlines]) + "\n",
        *(s.render(ctx.results[s.key], ctx) for s in sections),
        "## Wall time per stage\n",
        table(["stage", "seconds"], [[k, fmt(v, 2)] for k, v in ctx.timer.seconds.items()]) + "\n",
        CAVEATS,
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="directory for validation.md and plots")
    parser.add_argument("--sections", default=None,
                        help="comma-separated section keys to run (with the sections they need); "
                             f"default: all of {', '.join(s.key for s in SECTIONS)}")
    args = parser.parse_args(argv)
    sections = SECTIONS if args.sections is None else select(args.sections.split(","))
    out = Path(args.out)
    ctx = Context(out / "validation")
    ctx.fig_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run_sections(ctx, sections)
    (out / "validation.md").write_text(render_report(ctx, time.perf_counter() - start, sections))
    print(f"[validate] wrote {out / 'validation.md'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
