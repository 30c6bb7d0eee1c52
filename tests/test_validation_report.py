"""The validation report's section machinery and formatting (not the study's numbers)."""

from __future__ import annotations

import math

import pytest
from intermod.analysis.validation.formatting import Timer, fmt, table
from intermod.analysis.validation.recovery import SweepRow, best_row
from intermod.analysis.validation.report import SECTIONS, render_report, run_sections, select
from intermod.analysis.validation.section import Context, Section


def _row(ari: float) -> SweepRow:
    return SweepRow(resolution=1.0, n_modules=2, n_active=6, cost_units=0.0, ari=ari, nmi=ari,
                    coverage=1.0)


def test_fmt_and_table():
    assert fmt(None) == "–" and fmt(float("nan")) == "–"
    assert fmt(3) == "3" and fmt(0.5) == "0.500" and fmt(1e-5) == "1.00e-05"
    assert fmt(2.5e5) == "2.50e+05" and fmt(0.0) == "0.000"
    assert table(["a", "b"], [[1, "x"], [0.25, None]]).splitlines() == [
        "| a | b |", "|---|---|", "| 1 | x |", "| 0.250 | – |"]


def test_timer_sums_repeated_stages():
    timer = Timer()
    for _ in range(2):
        with timer("s"):
            pass
    with timer("t"):
        pass
    assert list(timer.seconds) == ["s", "t"] and all(v >= 0 for v in timer.seconds.values())


def test_best_row_skips_unscored_and_keeps_first_on_ties():
    rows = [_row(math.nan), _row(0.4), _row(0.9), _row(0.9)]
    assert best_row(rows) is rows[2]
    assert best_row([_row(math.nan)]) is None


def test_sections_run_in_order_and_read_earlier_results(tmp_path):
    first = Section("first", lambda ctx: 2, lambda r, ctx: f"## First\n\nvalue {r}\n",
                    lambda r, ctx: [f"- first is {r}"])
    second = Section("second", lambda ctx: ctx.results["first"] * 10,
                     lambda r, ctx: f"## Second\n\n![fig]({ctx.rel}/x.png) {r}\n")
    ctx = Context(tmp_path / "validation")
    run_sections(ctx, (first, second))
    assert ctx.results == {"first": 2, "second": 20}
    text = render_report(ctx, 1.0, (first, second))
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Key results", "## First", "## Second", "## Wall time per stage",
                     "## What these numbers do and do not support"]
    assert "- first is 2" in text and "![fig](validation/x.png) 20" in text


def test_registered_sections_have_unique_keys_and_need_only_earlier_ones():
    keys = [s.key for s in SECTIONS]
    assert len(keys) == len(set(keys)) and keys[0] == "examples"
    for i, s in enumerate(SECTIONS):
        assert set(s.needs) <= set(keys[:i]), s.key


def test_select_adds_what_a_section_needs_in_report_order():
    a = Section("a", lambda ctx: 1, lambda r, ctx: "")
    b = Section("b", lambda ctx: 2, lambda r, ctx: "", needs=("a",))
    c = Section("c", lambda ctx: 3, lambda r, ctx: "", needs=("b",))
    assert [s.key for s in select(["c"], (a, b, c))] == ["a", "b", "c"]
    assert [s.key for s in select(["a"], (a, b, c))] == ["a"]
    assert [s.key for s in select(["noise_eps"])] == ["examples", "noise_eps"]
    with pytest.raises(ValueError, match="unknown report sections"):
        select(["nope"], (a, b, c))
