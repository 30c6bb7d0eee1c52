"""The modular-addition transformer: shipped weights, training, Fourier labelling, alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from intermod.analysis.examples import fourier
from intermod.analysis.examples import modadd as ma

P_SMALL = 11


def _grid(fn) -> np.ndarray:
    """A function of (a, b) ∈ Z_p² as a column in :func:`all_inputs` order, (p², 1)."""
    a, b = np.meshgrid(np.arange(P_SMALL), np.arange(P_SMALL), indexing="ij")
    return fn(a.reshape(-1), b.reshape(-1))[:, None].astype(float)


def _wave(w: int, x: np.ndarray, phase: float = 0.0) -> np.ndarray:
    return np.cos(2 * math.pi * w * x / P_SMALL + phase)


@pytest.fixture(scope="module")
def shipped():
    return ma.load_model()


def test_shipped_weights_solve_the_task(shipped):
    assert shipped.cfg == ma.ModAddConfig()
    acc = ma.accuracy(shipped)
    assert acc == {"train": 1.0, "test": 1.0, "all": 1.0}


def test_key_frequencies_of_shipped_model(shipped):
    key = ma.key_frequencies(shipped)
    assert set(key) == {25, 6, 1}
    assert sum(key.values()) > 0.8


def test_training_is_deterministic():
    cfg = ma.ModAddConfig(steps=20)
    a, b = ma.train(cfg), ma.train(cfg)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_load_model_trains_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERMOD_CACHE", str(tmp_path))
    cfg = ma.ModAddConfig(steps=3, seed=5)
    first = ma.load_model(cfg)
    files = list((tmp_path / "modadd").glob("*.safetensors"))
    assert len(files) == 1
    again = ma.load_model(cfg)
    assert again.cfg == cfg
    for x, y in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("fn", "freq", "fraction"),
    [
        (lambda a, b: _wave(3, a), 3, 1.0),
        (lambda a, b: _wave(4, a + b, 0.3), 4, 1.0),
        (lambda a, b: _wave(5, a) * _wave(5, b, 1.0), 5, 1.0),
        (lambda a, b: 0.8 * _wave(1, b) + 0.6 * _wave(2, a), 1, 0.64),
        (lambda a, b: _wave(2, a) * _wave(5, b), 5, 0.0),
    ],
    ids=["cos a", "cos(a+b)", "same-frequency product", "mixture", "cross-frequency"],
)
def test_fourier_labels_known_answers(fn, freq, fraction):
    labels = fourier.fourier_labels(_grid(fn) + 7.0, P_SMALL)
    assert labels.fraction[0] == pytest.approx(fraction, abs=1e-9)
    if fraction > 0:
        assert labels.frequency[0] == freq
    else:  # all power in cross-frequency terms (column 0)
        assert labels.power[0, 0] == pytest.approx(1.0)
    assert labels.power[0].sum() == pytest.approx(1.0)


def test_fourier_labels_constant_is_frequency_zero():
    labels = fourier.fourier_labels(np.full((P_SMALL**2, 1), 3.0), P_SMALL)
    assert labels.frequency[0] == 0 and labels.fraction[0] == 0.0


def test_frequency_alignment_known_answers():
    freq = np.array([-1, 3, 3, 5, 5, 7, 0])
    power = np.zeros((7, 8))
    power[np.arange(1, 6), freq[1:6]] = 1.0
    lam = np.ones(7)
    perfect = fourier.frequency_alignment(np.array([-1, 0, 0, 1, 1, 2, 2]), freq, power, lam, [3, 5])
    assert perfect["ari"] == pytest.approx(1.0) and perfect["purity"] == 1.0
    assert perfect["n_nodes"] == 5
    assert perfect["modules_per_key"] == {3: [0], 5: [1]}
    assert perfect["modules"][0]["shares"] == pytest.approx({3: 1.0, 5: 0.0, "other": 0.0})
    merged = fourier.frequency_alignment(np.array([-1, 0, 0, 0, 0, 1, 1]), freq, power, lam, [3, 5])
    assert merged["purity"] == pytest.approx(3 / 5)
    assert merged["modules"][0]["frequencies"] == {3: 2, 5: 2}


@pytest.mark.slow
def test_analyse_shipped_model(shipped):
    """End to end on all p² inputs: the largest non-constant direction of every node layer
    is one key frequency (share > 0.9), and the report is complete."""
    result = ma.analyse(shipped)
    key = set(result.key_frequencies)
    for name in result.graph.layers:
        start = result.graph.node_offset[name]
        first = start + int(result.basis[name].bias_direction)
        assert result.frequency[first] in key
        assert result.fraction[first] > 0.9
    summary = result.summary()
    assert summary["accuracy"]["all"] == 1.0
    assert 0.0 <= summary["alignment"]["purity"] <= 1.0
    assert set(summary["label_purity"]) == set(result.graph.layers)


def test_build_example(shipped):
    example = ma.build()
    assert example.name == "modadd" and example.layers == list(ma.DEFAULT_LAYERS)
    assert example.inputs.shape == (shipped.cfg.p ** 2, 3)
    assert set(example.extra["key_frequencies"]) == {25, 6, 1}
