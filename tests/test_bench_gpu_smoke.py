"""bench/gpu.py's smoke mode (a tiny MLP and GPT-2 on the CPU): what it writes is complete and
its numbers are sane, and its budget planning shrinks and skips stages as it says."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
PRECISIONS = ["float64", "float32", "tf32", "bfloat16"]


@pytest.fixture(scope="module")
def gpu():
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sys.path == path          # bench/ must not shadow tests/reference.py
    return module


@pytest.fixture(scope="module")
def smoke(gpu, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    return gpu.main(["--smoke", "--out", str(out)]), out


def test_smoke_writes_what_it_returns(smoke):
    res, out = smoke
    assert json.loads((out / "gpu.json").read_text()) == json.loads(json.dumps(res))
    md = (out / "gpu.md").read_text()
    assert "## MLP 784-w-w-10, n = 200" in md and "## GPT-2 (2 blocks, d 32" in md
    assert res["machine"]["device"] == "cpu" and res["options"]["smoke"]
    assert 0 < res["elapsed_s"] < res["options"]["budget_s"]


def test_smoke_matmul_and_mlp_rows(smoke):
    res, _ = smoke
    assert list(res["matmul"]) == PRECISIONS and all(v > 0 for v in res["matmul"].values())
    assert [(r["width"], r["target"]) for r in res["mlp"]] == [(w, t) for w in (20, 40) for t in ("next_layer", "output")]
    for r in res["mlp"]:
        for p in ("float64", "float32"):
            assert r[p]["basis_s"] > 0 and r[p]["edges_s"] > 0 and r[p]["edge_gflops"] > 0
        assert r["float64"]["k"] == r["float32"]["k"] and len(r["float64"]["k"]) == 4
        assert r["float32_lambda_rel_err"] < 1e-5 and r["float32_edge_rel_err"] < 1e-3


def test_smoke_gpt2_runs_and_errors(smoke):
    g = smoke[0]["gpt2"]
    assert g["tokens"] == g["basis_tokens"] == g["edge_tokens"] == 64
    assert list(g["runs"]) == PRECISIONS and "errors" not in g and "skipped" not in g
    for p, r in g["runs"].items():
        assert r["basis_s"] > 0 and r["edges_s"] > 0 and r["n_edges"] > 0, p
    # d 32 + the constant direction, less the residual's mean direction, which every LayerNorm
    # removes (ln_f too), so that the output never sees it
    assert g["runs"]["float64"]["k"] == [32, 32, 32]
    f32, tf32, bf16 = g["runs"]["float32"], g["runs"]["tf32"], g["runs"]["bfloat16"]
    assert f32["same_k"] and tf32["same_k"]
    assert f32["lambda_rel_err"] < 1e-5 and f32["edge_rel_err"] < 1e-3 and f32["mixed_edge_rel_err"] < 1e-4
    assert tf32["edge_rel_err"] == f32["edge_rel_err"]          # TF32 is a CUDA setting: float32 on the CPU
    assert 1e-4 < bf16["lambda_rel_err"] < 5e-2                  # an 8-bit mantissa shows, within bounds
    assert bf16["mixed_w_abs_err"] < 2e-2 and bf16["mixed_w_abs_err"] > f32["mixed_w_abs_err"]
    assert set(g["calibration"]) == {"basis", "edges"}


def test_budget_shrinks_and_skips(gpu, tmp_path):
    res = gpu.main(["--smoke", "--out", str(tmp_path), "--budget-s", "0.5"])
    assert [r["width"] for r in res["mlp"] if "skipped" in r] == [40]
    g = res["gpt2"]
    assert g["basis_tokens"] == g["edge_tokens"] == 16           # one sequence: the least it runs
    assert len(g["skipped"]) == 3 and all(s.startswith("mixed") for s in g["skipped"])
    assert "mixed_edges_s" not in g["runs"]["tf32"]


def test_fit_and_estimate(gpu):
    assert gpu.estimate((2.0, 1.0), 40, 20) == 2 * 2 + 40
    assert gpu.fit([(1.0, 1.0)], 10.0, 40, 20) == 9
    assert gpu.fit([(1.0, 1.0), (0.0, 1.0)], 10.0, 40, 20) == 4
    assert gpu.fit([(100.0, 1.0)], 10.0, 40, 20) == 1
