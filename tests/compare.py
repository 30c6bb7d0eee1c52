"""Comparing results computed in different processes (tests only): never bitwise on floats."""

from __future__ import annotations

import pytest


def assert_same_numbers(got, want, rel: float = 1e-9, abs_: float = 1e-12, path: str = "") -> None:
    """Equal structure, equal strings and integers, floats equal to a relative tolerance `rel`
    (absolute `abs_` near 0): another process, thread count or processor sums in another order."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            assert_same_numbers(got[k], want[k], rel, abs_, f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, rel, abs_, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=rel, abs=abs_), path
    else:
        assert got == want, path
