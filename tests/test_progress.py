"""Progress: plain lines in logs, and the callback reaches inside long steps (cancellation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.core import progress as progress_mod
from intermod.analysis.report import direction_attribution
from torch import nn


class Stop(Exception):
    pass


def test_non_terminal_stderr_gets_plain_periodic_lines(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "PLAIN_INTERVAL", 0.0)
    assert list(progress_mod.Progress(True).track(range(3), "gram", 3)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "\r" not in err
    assert all(line.startswith("gram: ") for line in err.splitlines())
    assert [line.split()[1] for line in err.splitlines()] == ["1/3", "2/3", "3/3"]


def test_plain_lines_are_periodic_not_per_step():
    stream = io.StringIO()
    bar = progress_mod.PlainLines("edges", 1000, stream, interval=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    assert stream.getvalue() == ""   # nothing within the first interval


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return model, torch.randn(40, 3, dtype=torch.float64)


def test_integrated_quadrature_reaches_the_callback_inside_a_batch():
    """One batch, n_alpha = 6: the callback is reached (with done = 0) before the batch ends,
    so a cancellation stops the quadrature instead of waiting for the batch."""
    model, X = _model_and_data()
    basis = ia.compute_basis(model, X, ["0", "2", "output"], progress=False)
    seen = []

    def callback(stage: str, done: int, total: int) -> None:
        seen.append((stage, done))
        if done == 0:
            raise Stop

    with pytest.raises(Stop):
        ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=6, batch_size=100,
                       progress=False, callback=callback)
    assert seen == [("edges", 0)]
    calls = []
    ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=6, batch_size=100,
                   progress=False, callback=lambda s, d, t: calls.append(d))
    assert calls.count(0) >= 6 and calls[-1] == 1   # every quadrature node, then the batch


def test_probes_reach_the_callback_inside_a_batch():
    model, X = _model_and_data()
    seen = []
    ia.compute_basis(model, X, ["0", "2", "output"], n_probes=4, batch_size=100, progress=False,
                     callback=lambda s, d, t: seen.append((s, d)))
    assert any(d == 0 for _, d in seen)


def test_find_modules_reports_every_restart_and_can_be_stopped():
    rng = np.random.default_rng(0)
    mats = [rng.uniform(0.0, 1.0, (6, 5)), rng.uniform(0.0, 1.0, (4, 6))]
    g = ia.InteractionGraph.from_arrays(["a", "b", "c"], [np.ones(5), np.ones(6), np.ones(4)], mats)
    seen = []
    ia.find_modules(g, 1e-4, n_restarts=7, callback=lambda s, d, t: seen.append((s, d, t)))
    assert seen == [("restarts", i, 7) for i in range(1, 8)]

    def stop(stage: str, done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        ia.find_modules(g, 1e-4, n_restarts=7, callback=stop)
    bisection = []
    ia.find_modules(g, 1e-4, n_modules=2, callback=lambda s, d, t: bisection.append(s))
    assert "bisection" in bisection and bisection[-1] == "restarts"


@pytest.mark.parametrize("layer", ["2", "0"])
def test_input_attribution_reports_every_batch_and_node_and_can_be_stopped(layer):
    """``module_report`` → ``direction_attribution`` reports "input attribution" once per batch
    and quadrature node (a layer linear in the input, "0", is exact at one node and advances by
    the rest at once); a callback that raises stops it."""
    model, X = _model_and_data()
    graph = ia.build_graph(model, X, ia.compute_basis(model, X, ["0", "2", "output"], progress=False),
                           progress=False)
    seen = []
    direction_attribution(model, X, graph, {layer: [0]}, n_alpha=3, batch_size=16, progress=False,
                             callback=lambda *r: seen.append(r))
    assert [r[1] for r in seen] == ([1, 2, 3, 4, 5, 6, 7, 8, 9] if layer == "2" else [1, 3, 4, 6, 7, 9])
    assert {(r[0], r[2]) for r in seen} == {("input attribution", 9)}

    def stop(stage, done, total):
        if done >= 2:
            raise Stop

    part = ia.find_modules(graph, epsilon=1e-6)
    with pytest.raises(Stop):
        ia.module_report(model, X, graph, part, n_alpha=3, batch_size=16, progress=False, callback=stop)
