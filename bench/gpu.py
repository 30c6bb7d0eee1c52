"""GPU benchmark (issue 10): `make gpu-check` runs it after tests/test_cuda.py.

    python bench/gpu.py [--out out/gpu] [--budget-s 270] [--tokens 10240] [--seq-len 256]
                        [--layers 12] [--edge-tokens N] [--batch-seqs 20] [--probes 8]
                        [--repeats 2] [--smoke]

1. Matrix-product rates on the device, the yardstick of every other figure: float64,
   float32 (TF32 off), TF32 and bfloat16, n × n by n × n (2n³ FLOP).
2. MLP 784-w-w-10, n = 2000, w = 100 / 400 / 800, both Jacobian targets, float64 and float32
   (TF32 off), through bench/run.py's ``pipeline``: basis and edge seconds, the edges' rate on
   the dense floor 2·n·Σ_l k_{l+1}·h_l·k_l against the matmul's, Λ and E errors of float32.
3. GPT-2 small built from ``GPT2Config()`` (12 blocks, d 768, 12 heads, random seeded weights,
   no download) on ``tokens`` random token ids in sequences of ``seq_len``; node layers the
   residual stream h.0 … h.11 and ``last_hidden_state`` (hf.cut_points), as
   analysis/examples/minilm.py reads a transformer. Basis: output target, 8 ±1 probes, every
   token. Edges: one probe over positions, on the first ``edge_tokens``. Each precision
   (float64, float32, TF32, bfloat16) is timed on its own (torch.cuda.synchronize around
   every stage) with its peak GPU memory (max_memory_allocated); Λ and E are compared with
   the float64 run on the same tokens (relative error of Λ > 1e-3·max Λ and of E > 1e-6·max E,
   i.e. w > 1e-3·max w, and the largest |Δw| / max w), and "mixed" runs put each lower
   precision's edges on the float64 basis to separate the edge arithmetic from the basis.

Budget: the edges cost about k_{l+1} backward passes through a block per section (19 MFLOP
per token and direction, so ~1.8 PFLOP per precision for GPT-2 small on 10k tokens), so every
GPT-2 stage is first timed on 2 and 1 sequences, its full time extrapolated as
a·batches + b·sequences and printed, and the basis and edge token counts are cut so that
everything fits in ``budget_s`` (bases within 30 % of what is left, own edges within 55 %, the
mixed runs only while time remains). Results are
rewritten after every stage (``gpu.json``, ``gpu.md`` under ``--out``), so a run stopped from
outside keeps what it finished. ``--smoke`` runs a tiny configuration on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _cpu_bench():
    """bench/run.py as a module, loaded by path (sys.path is left alone: bench/ holds a
    reference.py that would shadow tests/reference.py)."""
    spec = importlib.util.spec_from_file_location("intermod_bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_run = _cpu_bench()
_edge_err, _rel_err, floor_gflop, inputs = _run._edge_err, _run._rel_err, _run.floor_gflop, _run.inputs
machine, mlp, pipeline = _run.machine, _run.mlp, _run.pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PRECISIONS = {"float64": (torch.float64, False), "float32": (torch.float32, False),
              "tf32": (torch.float32, True), "bfloat16": (torch.bfloat16, False)}
SMOKE_GPT2 = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 100,
              "bos_token_id": 99, "eos_token_id": 99}


# --------------------------------------------------------------------------- clock, timing


class Clock:
    """Wall time since the start against ``budget_s``."""

    def __init__(self, budget_s: float):
        self.budget_s, self.start = budget_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(device: str) -> float | None:
    """max_memory_allocated since the last reset (MiB) on CUDA; None on the CPU."""
    return torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None


def timed(fn: Callable[[], object], device: str) -> tuple[object, float, float | None]:
    """(fn(), seconds, peak MiB of this call) with the device synchronised at both ends."""
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t, peak_mib(device)


@contextmanager
def precision(name: str) -> Iterator[torch.dtype]:
    """The dtype of precision ``name``, with TF32 on for matmuls and cuDNN exactly for "tf32"
    (float32_matmul_precision "high" / "highest"); the previous settings are restored."""
    dtype, tf32 = PRECISIONS[name]
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield dtype
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def matmul_tflops(device: str, name: str, n: int, repeats: int = 5) -> float:
    """2n³·repeats / seconds of an n × n product in precision ``name``, in TFLOP/s."""
    with precision(name) as dtype:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b
        _, s, _ = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * n ** 3 * repeats / s / 1e12


# ------------------------------------------------------------------------------------ MLP


def mlp_rows(device: str, widths: list[int], n: int, repeats: int, clock: Clock, share: float) -> list[dict]:
    """bench/run.py's pipeline per width × target × (float64, float32): best of ``repeats``.
    A width whose estimate (the last width's seconds × (w / w_last)³, the edges' k·h·k) is
    over ``share`` of the time left is skipped and says so."""
    X, rows, last = inputs(n), [], None
    pipeline(mlp(widths[0]), X[:200], "next_layer", device)          # warm-up
    for w in widths:
        need = None if last is None else last[1] * (w / last[0]) ** 3
        print(f"MLP w {w}: estimated {'?' if need is None else f'{need:.1f}'} s", flush=True)
        if need is not None and need > share * clock.left():
            rows.append({"width": w, "skipped": f"estimated {need:.0f} s, {clock.left():.0f} s left"})
            continue
        t0 = time.perf_counter()
        for target in ("next_layer", "output"):
            rows.append(mlp_row(mlp(w), X, target, device, repeats))
        last = (w, time.perf_counter() - t0)
    return rows


def mlp_row(model, X: torch.Tensor, target: str, device: str, repeats: int) -> dict:
    """float64 and float32 (TF32 off) runs of one width and target: seconds, edge GFLOP/s on
    the dense floor, and float32's errors against float64."""
    out: dict = {"width": model[0].out_features, "target": target, "n": X.shape[0]}
    runs = {}
    for name in ("float64", "float32"):
        with precision(name) as dtype:
            runs[name] = min((pipeline(model, X, target, device, dtype=dtype, modules=False) for _ in range(repeats)),
                             key=lambda r: r["total_s"])
        r = runs[name]
        gflop = floor_gflop(model, r["k"], X.shape[0])
        out[name] = {"basis_s": round(r["basis_s"], 3), "edges_s": round(r["edges_s"], 3),
                     "total_s": round(r["total_s"], 3), "k": r["k"],
                     "edge_gflops": float(f"{gflop / r['edges_s']:.3g}")}   # the smoke run's are ~0.01
    b64, b32 = runs["float64"]["_basis"], runs["float32"]["_basis"]
    out["float32_lambda_rel_err"] = max(_rel_err(b32[n].Lambda, b64[n].Lambda) for n in b64.layers)
    out["float32_edge_rel_err"] = _edge_err(runs["float32"]["_graph"], runs["float64"]["_graph"])
    return out


# ----------------------------------------------------------------------------------- GPT-2


def gpt2_model(layers: int, smoke: bool, seed: int = 0):
    """GPT-2 small (or the smoke test's tiny GPT-2) from a config with seeded random weights,
    built through hf.model_from_config (eager attention, eval mode) from safetensors bytes."""
    from intermod.analysis.models import hf
    from safetensors.torch import save
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(**SMOKE_GPT2) if smoke else GPT2Config()
    config.n_layer = layers
    torch.manual_seed(seed)
    weights = save({k: v.contiguous() for k, v in GPT2Model(config).state_dict().items()})
    return hf.model_from_config(config.to_dict(), weights)


def token_ids(n_seq: int, seq_len: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """(n_seq, seq_len) uniformly random token ids, seeded."""
    return torch.randint(0, vocab, (n_seq, seq_len), generator=torch.Generator().manual_seed(seed))


class GPT2Run:
    """The GPT-2 stages on one model, token set and device."""

    def __init__(self, model, ids: torch.Tensor, device: str, probes: int, batch_seqs: int):
        from intermod.analysis.models import hf

        self.model, self.ids, self.device = model, ids, device
        self.layers = hf.cut_points(model)
        self.opts = {"device": device, "progress": False, "batch_size": batch_seqs}
        self.probes = probes

    def basis(self, name: str, n_seq: int):
        from intermod import analysis as ia

        with precision(name) as dtype:
            return ia.compute_basis(self.model, {"input_ids": self.ids[:n_seq]}, self.layers,
                                    n_probes=self.probes, dtype=dtype, **self.opts)

    def edges(self, name: str, basis, n_seq: int):
        from intermod import analysis as ia

        with precision(name) as dtype:
            return ia.build_graph(self.model, {"input_ids": self.ids[:n_seq]}, basis, n_probes=1,
                                  dtype=dtype, **self.opts)

    def calibrate(self, stage: Callable[[int], object]) -> tuple[float, float]:
        """(a, b) of t = a·batches + b·sequences (:func:`estimate`) from timings on 2 and then 1
        sequences, one batch each: a one-time cost left in the first call can then only raise
        b, i.e. the estimate (b at least 5 % of the 2-sequence time per sequence, so that timing
        noise cannot make it vanish)."""
        t2, t1 = (timed(lambda n=n: stage(n), self.device)[1] for n in (2, 1))
        b = max(t2 - t1, 0.05 * t2)
        return max(t2 - 2 * b, 0.0), b


def estimate(cost: tuple[float, float], n_seq: int, batch_seqs: int) -> float:
    """a·⌈n / batch⌉ + b·n seconds: a fixed cost per batch (the k_{l+1} backward passes per
    section are launched once per batch whatever its size) plus a cost per sequence."""
    return cost[0] * -(-n_seq // batch_seqs) + cost[1] * n_seq


def fit(costs: list[tuple[float, float]], seconds: float, most: int, batch_seqs: int) -> int:
    """The most sequences (1 … most) whose summed :func:`estimate` stays within ``seconds``."""
    n = most
    while n > 1 and sum(estimate(c, n, batch_seqs) for c in costs) > seconds:
        n -= 1
    return n


def w_abs_err(graph, ref) -> float:
    """max |w − w_ref| / max w_ref over every section (leading blocks)."""
    errs = []
    for a, b in zip(ref.layers[:-1], ref.layers[1:]):
        w, r = graph.edge_matrix(a, b), ref.edge_matrix(a, b)
        block = tuple(slice(0, min(x, y)) for x, y in zip(w.shape, r.shape))
        errs.append(float(np.abs(w[block] - r[block]).max()))
    return max(errs) / float(ref.w.max())


def working(run: GPT2Run, res: dict) -> list[str]:
    """The precisions whose basis and edges run on one sequence (this also warms up their
    kernels); a failure is recorded in ``res["errors"]`` instead of stopping the bench."""
    ok = []
    for p in PRECISIONS:
        try:
            run.edges(p, run.basis(p, 1), 1)
            ok.append(p)
        except Exception as err:   # e.g. an op without a kernel for this dtype on this device
            res.setdefault("errors", []).append(f"{p}: {type(err).__name__}: {str(err)[:300]}")
    return ok


def gpt2_bench(run: GPT2Run, clock: Clock, n_seq: int, edge_seqs: int, batch_seqs: int,
               save: Callable[[], None], res: dict) -> None:
    """Bases (every working precision), own edges, mixed edges, errors against float64; fills
    ``res`` and calls ``save`` after every stage."""
    seq_len, active = run.ids.shape[1], working(run, res)
    cal = {"basis": {p: run.calibrate(lambda n, p=p: run.basis(p, n)) for p in active}}
    n_basis = fit(list(cal["basis"].values()), 0.3 * clock.left(), n_seq, batch_seqs)
    res.update(basis_tokens=n_basis * seq_len, calibration=cal)
    bases, graphs, runs = {}, {}, res.setdefault("runs", {})
    for p in active:
        print(f"GPT-2 basis {p} on {n_basis * seq_len} tokens: estimated "
              f"{estimate(cal['basis'][p], n_basis, batch_seqs):.1f} s", flush=True)
        bases[p], s, mem = timed(lambda p=p: run.basis(p, n_basis), run.device)
        runs[p] = {"basis_s": round(s, 3), "basis_peak_mib": mem, "k": [bases[p][n].k for n in run.layers]}
        save()
    cal["edges"] = {p: run.calibrate(lambda n, p=p: run.edges(p, bases[p], n)) for p in active}
    n_edge = fit(list(cal["edges"].values()), 0.55 * clock.left(), min(edge_seqs, n_basis), batch_seqs)
    res.update(edge_tokens=n_edge * seq_len)
    for p in sorted(active, key=["float32", "float64", "tf32", "bfloat16"].index):
        print(f"GPT-2 edges {p} on {n_edge * seq_len} tokens: estimated "
              f"{estimate(cal['edges'][p], n_edge, batch_seqs):.1f} s", flush=True)
        graphs[p], s, mem = timed(lambda p=p: run.edges(p, bases[p], n_edge), run.device)
        runs[p].update(edges_s=round(s, 3), edges_peak_mib=mem, n_edges=graphs[p].n_edges)
        save()
    if "float64" not in active:
        return
    ref, ref_graph = bases["float64"], graphs["float64"]
    for p in (q for q in ("float32", "tf32", "bfloat16") if q in active):
        runs[p].update(lambda_rel_err=max(_rel_err(bases[p][n].Lambda, ref[n].Lambda) for n in run.layers),
                       edge_rel_err=_edge_err(graphs[p], ref_graph), w_abs_err=w_abs_err(graphs[p], ref_graph),
                       same_k=runs[p]["k"] == runs["float64"]["k"])
    save()
    for p in (q for q in ("tf32", "bfloat16", "float32") if q in active):
        need = estimate(cal["edges"][p], n_edge, batch_seqs)
        print(f"GPT-2 mixed edges {p} on the float64 basis: estimated {need:.1f} s", flush=True)
        if need > clock.left():
            res.setdefault("skipped", []).append(f"mixed {p}: estimated {need:.0f} s, {clock.left():.0f} s left")
            continue
        g, s, _ = timed(lambda p=p: run.edges(p, ref, n_edge), run.device)
        runs[p].update(mixed_edges_s=round(s, 3), mixed_edge_rel_err=_edge_err(g, ref_graph),
                       mixed_w_abs_err=w_abs_err(g, ref_graph))
        save()


# ------------------------------------------------------------------------------ reporting


def device_info(device: str) -> dict:
    info = {"host": machine(), "python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


def markdown(res: dict) -> str:
    """The results as markdown tables (what exists so far)."""
    info = res["machine"]
    lines = [f"# GPU benchmark ({'smoke, ' if res['options']['smoke'] else ''}{res['elapsed_s']:.0f} s "
             f"of a {res['options']['budget_s']:.0f} s budget)", "",
             f"Device: {info.get('gpu', 'CPU')} ({info['device']}); {info['host']}; CUDA {info.get('cuda')}.", "",
             "Matmul TFLOP/s: " + ", ".join(f"{k} {v:.2f}" for k, v in res.get("matmul", {}).items()), ""]
    if res.get("mlp"):
        lines += [f"## MLP 784-w-w-10, n = {res['mlp'][0].get('n', '?')} (best of {res['options']['repeats']}; "
                  "edges GFLOP/s on the dense floor 2·n·Σ k_{l+1}·h_l·k_l)", "",
                  "| w | target | f64 basis s | f64 edges s | f64 edges GFLOP/s | f32 basis s | f32 edges s "
                  "| f32 edges GFLOP/s | f32 err Λ | f32 err E |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["mlp"]:
            if "skipped" in r:
                lines.append(f"| {r['width']} | skipped: {r['skipped']} |")
                continue
            a, b = r["float64"], r["float32"]
            lines.append(f"| {r['width']} | {r['target']} | {a['basis_s']} | {a['edges_s']} | {a['edge_gflops']} | "
                         f"{b['basis_s']} | {b['edges_s']} | {b['edge_gflops']} | {r['float32_lambda_rel_err']:.1e} | "
                         f"{r['float32_edge_rel_err']:.1e} |")
    g = res.get("gpt2")
    if g and g.get("runs"):
        lines += ["", f"## GPT-2 ({g['config']}), basis on {g.get('basis_tokens')} tokens, "
                  f"edges on {g.get('edge_tokens')} tokens", "",
                  "| precision | basis s | basis peak MiB | edges s | edges peak MiB | err Λ | err E | max Δw / max w "
                  "| same k | mixed edges s | mixed err E | mixed max Δw / max w |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        fmt = lambda r, k, f: "" if r.get(k) is None else format(r[k], f)     # noqa: E731
        for p, r in g["runs"].items():
            lines.append(f"| {p} | {fmt(r, 'basis_s', '.2f')} | {fmt(r, 'basis_peak_mib', '.0f')} | "
                         f"{fmt(r, 'edges_s', '.2f')} | {fmt(r, 'edges_peak_mib', '.0f')} | "
                         f"{fmt(r, 'lambda_rel_err', '.1e')} | {fmt(r, 'edge_rel_err', '.1e')} | "
                         f"{fmt(r, 'w_abs_err', '.1e')} | {r.get('same_k', '')} | {fmt(r, 'mixed_edges_s', '.2f')} | "
                         f"{fmt(r, 'mixed_edge_rel_err', '.1e')} | {fmt(r, 'mixed_w_abs_err', '.1e')} |")
    for note in (g or {}).get("skipped", []) + (g or {}).get("errors", []):
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/gpu"))
    ap.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget of the whole bench")
    ap.add_argument("--tokens", type=int, default=10240)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--layers", type=int, default=12, help="GPT-2 blocks (GPT-2 small: 12)")
    ap.add_argument("--edge-tokens", type=int, default=None, help="at most this many edge tokens (default: all)")
    ap.add_argument("--batch-seqs", type=int, default=20, help="sequences per batch")
    ap.add_argument("--probes", type=int, default=8, help="±1 probes of the basis's output Jacobian")
    ap.add_argument("--repeats", type=int, default=2, help="MLP runs per configuration (the best is kept)")
    ap.add_argument("--smoke", action="store_true", help="a tiny configuration on the CPU, in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tokens, args.seq_len, args.layers, args.probes, args.repeats = 64, 16, 2, 2, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; returns the results written to ``--out``/gpu.json."""
    args = parse(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device; run with --smoke for the CPU smoke test")
    clock = Clock(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res: dict = {"machine": device_info(device), "options": options, "elapsed_s": 0.0}

    def save() -> None:
        res["elapsed_s"] = round(clock.elapsed(), 1)
        (args.out / "gpu.json").write_text(json.dumps(res, indent=1))
        (args.out / "gpu.md").write_text(markdown(res))

    n = 256 if args.smoke else 4096
    res["matmul"] = {p: round(matmul_tflops(device, p, n), 3) for p in PRECISIONS}
    save()
    widths, n_mlp = ([20, 40], 200) if args.smoke else ([100, 400, 800], 2000)
    res["mlp"] = mlp_rows(device, widths, n_mlp, args.repeats, clock, share=0.5)
    save()
    n_seq = max(1, args.tokens // args.seq_len)
    edge_seqs = n_seq if args.edge_tokens is None else max(1, args.edge_tokens // args.seq_len)
    model, s, _ = timed(lambda: gpt2_model(args.layers, args.smoke), "cpu")
    res["gpt2"] = {"config": f"{args.layers} blocks, d {model.config.n_embd}, {model.config.n_head} heads, "
                             f"vocabulary {model.config.vocab_size}",
                   "tokens": n_seq * args.seq_len, "seq_len": args.seq_len, "build_s": round(s, 2)}
    ids = token_ids(n_seq, args.seq_len, model.config.vocab_size)
    run = GPT2Run(model, ids, device, args.probes, args.batch_seqs)
    gpt2_bench(run, clock, n_seq, edge_seqs, args.batch_seqs, save, res["gpt2"])
    save()
    print(markdown(res), flush=True)
    return res


if __name__ == "__main__":
    main()
