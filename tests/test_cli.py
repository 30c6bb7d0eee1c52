"""The `intermod` command line against a real server, and in process with --local."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from compare import assert_same_numbers
from intermod import analysis as ia
from intermod.client.cli import main
from intermod.client.spawn import running_server
from intermod.server.model_spec import describe_model
from safetensors.torch import save_file
from torch import nn

LAYERS = ["0", "2", "output"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("cli") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """spec.json, weights.safetensors and data.npy of a small MLP."""
    d = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    spec, weights = describe_model(model)
    (d / "spec.json").write_text(json.dumps(spec))
    save_file(weights, d / "weights.safetensors")
    data = np.random.default_rng(0).normal(size=(200, 3))
    np.save(d / "data.npy", data)
    return {"dir": d, "model": model, "data": torch.from_numpy(data)}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def analyze(capsys, server, files, *extra: str) -> str:
    d = files["dir"]
    result = run_json(capsys, "analyze", "--spec", d / "spec.json", "--weights",
                      d / "weights.safetensors", "--data", d / "data.npy", "--layers", *LAYERS,
                      "--address", server.address, *extra)
    return result["graph_id"]


def test_analyze_modules_sweep_score_export(capsys, server, files, tmp_path):
    gid = analyze(capsys, server, files, "--edge-method", "integrated", "--n-alpha", "4")
    addr = ("--address", server.address)
    basis = ia.compute_basis(files["model"], files["data"], LAYERS, progress=False)
    local = ia.build_graph(files["model"], files["data"], basis, edge_method="integrated",
                           n_alpha=4, progress=False)

    part = run_json(capsys, "modules", gid, "--epsilon", "1e-3", *addr)
    want = ia.find_modules(local, epsilon=1e-3)
    assert part["membership"] == want.membership.tolist()
    code, text, _ = run(capsys, "modules", gid, "--epsilon", "1e-3", *addr)
    assert code == 0 and "modules, cost" in text

    rows = run_json(capsys, "sweep", gid, "--epsilons", "1e-3", "1e-2", "--resolutions", "0.05",
                    *addr)
    assert [(r["epsilon"], r["resolution"]) for r in rows] == [(1e-3, 0.05), (1e-2, 0.05)]

    (tmp_path / "part.json").write_text(json.dumps(part))
    score = run_json(capsys, "score", gid, "--membership", tmp_path / "part.json",
                     "--epsilon", "1e-3", *addr)
    assert score["cost"] == pytest.approx(want.cost)

    out = run_json(capsys, "export", gid, "--out", tmp_path / "g.graphml", *addr)
    assert out["format"] == "graphml" and (tmp_path / "g.graphml").stat().st_size > 0
    run_json(capsys, "plot", gid, "--out", tmp_path / "g.png", "--epsilon", "1e-3", *addr)
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")

    assert gid in [g["id"] for g in run_json(capsys, "graphs", *addr)]
    assert any(m["source"] == "spec" for m in run_json(capsys, "models", *addr))
    job = run_json(capsys, "job", client_job(server, gid), *addr)
    assert job["state"] == "succeeded" and job["graph_id"] == gid


def client_job(server, gid: str) -> str:
    from intermod.client import Client
    with Client(server.address) as c:
        return c.graph_info(gid).job_id


def test_local_mode_matches_server(capsys, server, files, tmp_path):
    d = files["dir"]
    gid = analyze(capsys, server, files)
    out = run_json(capsys, "analyze", "--local", "--spec", d / "spec.json", "--weights",
                   d / "weights.safetensors", "--data", d / "data.npy", "--layers", *LAYERS,
                   "--out", tmp_path / "local.json")
    assert out["n_nodes"] > 0
    local = run_json(capsys, "modules", tmp_path / "local.json", "--local", "--epsilon", "1e-3")
    remote = run_json(capsys, "modules", gid, "--epsilon", "1e-3", "--address", server.address)
    assert local["membership"] == remote["membership"]
    assert local["cost"] == pytest.approx(remote["cost"])
    run_json(capsys, "plot", tmp_path / "local.json", "--local", "--out", tmp_path / "l.svg")
    assert b"<svg" in (tmp_path / "l.svg").read_bytes()[:2000]


def test_diagnose_remote_and_local(capsys, server, files):
    d = files["dir"]
    common = ["--spec", d / "spec.json", "--weights", d / "weights.safetensors", "--data",
              d / "data.npy", "--layers", *LAYERS, "--epsilon", "1e-4"]
    remote = run_json(capsys, "diagnose", *common, "--address", server.address)
    local = run_json(capsys, "diagnose", *common, "--local")
    want = json.loads(json.dumps(
        ia.diagnose(files["model"], files["data"], LAYERS, 1e-4, progress=False).to_dict()))
    assert local == want                      # the same process: the same arithmetic
    assert_same_numbers(remote, want)         # another process: equal to round-off
    code, out, _ = run(capsys, "diagnose", *common, "--local")
    assert code == 0 and "rank_G=" in out and not out.lstrip().startswith("{")   # a table
    assert out.count("\n") == len(LAYERS) + 1


def test_score_explains_a_file_without_membership(capsys, tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"modules": []}))
    code, _, err = run(capsys, "score", "g_x", "--membership", wrong, "--epsilon", "1e-3")
    assert code == 1 and "'membership' list" in err and "wrong.json" in err
    wrong.write_text(json.dumps([[0, 1], [2]]))
    code, _, err = run(capsys, "score", "g_x", "--membership", wrong, "--epsilon", "1e-3")
    assert code == 1 and "integer module ids" in err


def test_output_into_a_closed_pipe_is_quiet(server):
    """`intermod models --json | head`: the reader leaving early is no error."""
    proc = subprocess.Popen([sys.executable, "-m", "intermod.client.cli", "models", "--json",
                             "--address", server.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()   # before the command prints anything
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b"", err


def test_analyze_registers_a_spec_once(capsys, server, files):
    before = run_json(capsys, "models", "--address", server.address)
    analyze(capsys, server, files)
    analyze(capsys, server, files)
    after = run_json(capsys, "models", "--address", server.address)
    assert len(after) - len(before) <= 1   # the first analyze of the module may register it


def test_errors_exit_nonzero_with_one_line(capsys, server, files):
    d = files["dir"]
    code, _, err = run(capsys, "modules", "g_missing", "--address", server.address)
    assert code == 1 and err.startswith("intermod: error: NOT_FOUND") and err.count("\n") == 1
    code, _, err = run(capsys, "analyze", "--spec", d / "spec.json", "--weights",
                       d / "weights.safetensors", "--data", d / "data.npy", "--layers", "0",
                       "9", "--address", server.address, "--no-progress")
    assert code == 1 and "INVALID_ARGUMENT: layers[1]: unknown layer '9'" in err
    assert err.count("\n") == 1
    code, _, err = run(capsys, "modules", "g_x", "--epsilon", "-1", "--address", server.address)
    assert code == 1 and "search.epsilon" in err


def test_console_script(server):
    script = Path(sys.executable).with_name("intermod")
    ok = subprocess.run([script, "graphs", "--json", "--address", server.address], check=False,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and isinstance(json.loads(ok.stdout), list)



def test_unreachable_server_is_one_line(capsys):
    code, _, err = run(capsys, "graphs", "--address", "127.0.0.1:1")
    assert code == 1 and err.startswith("intermod: error: UNAVAILABLE") and err.count("\n") == 1


def test_report_remote_and_local(capsys, server, files, tmp_path):
    """`intermod report` writes the HTML module report from a server graph id and from a local
    graph JSON; the same modules either way. HTML refuses top_n with INVALID_ARGUMENT."""
    from intermod.client import Client
    from intermod.client.errors import RemoteError

    gid = analyze(capsys, server, files)
    d = files["dir"]
    run_json(capsys, "analyze", "--local", "--spec", d / "spec.json", "--weights", d / "weights.safetensors",
             "--data", d / "data.npy", "--layers", *LAYERS, "--out", tmp_path / "local.json")
    pages = []
    for where, flags in ((gid, ("--address", server.address)), (tmp_path / "local.json", ("--local",))):
        out = run_json(capsys, "report", where, "--out", tmp_path / "r.html", "--epsilon", "1e-3", *flags)
        assert out["format"] == "html"
        pages.append((tmp_path / "r.html").read_text())
    want = ia.find_modules(ia.InteractionGraph.from_json(tmp_path / "local.json"), epsilon=1e-3)
    for page in pages:
        assert page.startswith("<!DOCTYPE html>") and page.count("class='panel'") == want.n_modules
    code, _, err = run(capsys, "report", gid, "--out", tmp_path / "r.png", "--address", server.address)
    assert code == 1 and ".html" in err
    with Client(server.address) as c, pytest.raises(RemoteError) as info:
        c.export(gid, "html", top_n=5)
    assert info.value.code.name == "INVALID_ARGUMENT" and info.value.field == "top_n"


@pytest.mark.parametrize("devices, bad", [("cpu,gpu", "'gpu' is not a torch device"),
                                          ("cpu,cuda:1", "'cuda:1': torch sees 0 CUDA device")])
def test_serve_refuses_a_device_list_it_cannot_use_at_start_up(monkeypatch, devices, bad):
    """`intermod serve --device LIST` checks every entry before it binds (a bad one used to fail
    in the first job on that worker)."""
    from intermod.server.app import resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_devices("cpu") == ["cpu"]
    with pytest.raises(ValueError, match=bad):
        resolve_devices(devices)
