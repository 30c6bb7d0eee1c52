"""CUDA: the GPU path computes the CPU's numbers, on the GPU (every test skips without CUDA).

Four small models cover the kinds of section: an MLP (the Linear–activation closed forms), a
CNN (conv maps read as channels at positions: conv closed forms, receptive-field Grams across
max-pooling), torchvision's ResNet blocks in small (the conv edges with an activation after the
sum, receptive-field Grams with the mean slot) and a two-block GPT-2 built from a ``GPT2Config`` (attention,
LayerNorm, HF's Conv1D, padded positions). Each runs ``compute_basis`` + ``build_graph`` with
``device="cuda"`` and on the CPU, for both Jacobian targets, and the two must agree:

- float64 on both: the arithmetic is the same up to the summation order of the GEMMs and
  reductions (cuBLAS against the CPU BLAS), a relative perturbation of the Grams of order
  1e-15·√n. Λ and E then agree to 1e-9 relative (E on the edges with w > 1e-3·max w, the only
  ones a partition at a sensible ε sees), and every column of C whose Λ is separated from its
  neighbours by more than 1e-4·max Λ agrees to 1e-7 of the column's size, up to its sign (an
  eigenvector turns by about perturbation / gap, so 1e-15 / 1e-4 = 1e-11 is expected; the
  margin covers the conditioning of G's whitening). A CPU run with another batch size, i.e.
  another summation order, differs by at most 8e-12 in Λ, C and E on these models.
- float32 on CUDA against float64 on the CPU, TF32 off (a 10-bit mantissa is not float32):
  products in float32, sums in float64 (docs/performance.md). float32 edges on the float64
  basis isolate the edge arithmetic: E to 5e-5 (the CPU shows ≤ 4.1e-6 on these models).
  The whole pipeline in float32: Λ to 2e-5 (CPU ≤ 4.5e-7), and E to 10× the error float32
  shows on the CPU on the same model (measured 2026-12-06: 2.5e-5 / 2.5e-3 / 1.1e-4 for the
  MLP / CNN / GPT-2; 2026-12-07: 3.3e-6 for the ResNet blocks, whose tolerance is 15× that): that error sits on edges between directions with close Λ, which a basis
  computed from float32 data turns by about rounding / gap (docs/performance.md), so it is a
  property of the model, not of the device.
- bfloat16 on CUDA runs and keeps Λ within 5 % (8-bit mantissa; 1e-2 on the CPU); its edges
  are the bench's business (bench/gpu.py reports their error).

The work itself must run on the GPU: a dispatch mode sums the FLOPs of every matrix product
and convolution by device, and at most 1 % may run on the CPU. Per-sample work there would be
~100 %; everything a run on two samples does, which bounds any fixed cost (the conv colouring's
structural probes are the only CPU products by design), is ≤ 0.65 % of the MLP's and the CNN's
runs (8 % of GPT-2's, two of its 24 sequences). The user's model is never moved or changed,
results are float64 numpy arrays, and the batched backward pass must not have fallen back to a
loop over cotangents.

Module reports (``module_report``, ``direction_attribution``, ``top_examples``) on cuda are held
to the CPU's float64 numbers the same way (energies, shares and top-example scores to 1e-9), with
the same 1 % bound on CPU FLOPs (the CNN's conv colouring probes 64 one-hot maps on the CPU:
1.2e-4 of its report).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from intermod import analysis as ia
from intermod.analysis.models import hf
from nets import TorchvisionResNet, pooled_cnn
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device (torch.cuda.is_available() is False): run `make gpu-check` on a GPU"),
    pytest.mark.filterwarnings("error:batched backward unavailable:RuntimeWarning"),
]

F64 = torch.float64
TARGETS = ("output", "next_layer")
MODELS = ("mlp", "cnn", "resnet", "gpt2")
C_GAP = 1e-4          # columns of C compared: Λ separated from its neighbours by this · max Λ
EDGE_FLOOR = 1e-6     # E compared where E > EDGE_FLOOR · max E (w > 1e-3 · max w)
F32_EDGE_TOL = {"mlp": 3e-4, "cnn": 2.5e-2, "resnet": 5e-5, "gpt2": 1.5e-3}   # relative, E above EDGE_FLOOR
PROBES = {"mlp": None, "cnn": None, "resnet": None, "gpt2": 4}   # ±1 probes are hashed, so equal on every device


# ------------------------------------------------------------------------------ models


def mlp_case() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """12 → 24 (ReLU) → 24 (GELU) → 5, float64; 2048 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 5)).double()
    x = torch.randn(2048, 12, generator=torch.Generator().manual_seed(1), dtype=F64)
    return model.eval(), x, ["0", "2", "4", "output"]


def cnn_case() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """(2, 8, 8) maps: conv 3×3 → ReLU → max-pool → conv 3×3 → ReLU → max-pool → flatten →
    Linear → tanh → Linear, float64; 512 samples. Node layers: the input map and conv2's
    input map (channels at positions; the section between them, [Conv] [ReLU] [MaxPool], takes
    the conv edges and the receptive-field Gram), the flat hidden layer, the output."""
    model = pooled_cnn((2, 4, 6), flat=24, hidden=10, out=3)
    x = torch.randn(512, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    return model.eval(), x, ["conv1", "conv2", "fc1", "output"]


def resnet_case() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """torchvision's ResNet in small (tests/nets.py): stem, a BasicBlock, a downsampling one with
    a projection shortcut, pool, Linear, cut at the blocks, float64; 256 maps of (2, 8, 8). The
    blocks take the conv edges with the ReLU after the sum and the receptive-field Grams."""
    x = torch.randn(256, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    return TorchvisionResNet().double().eval(), x, ["layer1.0", "layer1.1", "avgpool", "output"]


def gpt2_case() -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
    """A two-block GPT-2 (d 16, 2 heads, vocabulary 50) from a config, random weights;
    24 sequences of 12 tokens, the last 3 positions of every third sequence padded."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=32, vocab_size=50,
                        bos_token_id=49, eos_token_id=49, attn_implementation="eager")
    model = GPT2Model(config).eval()
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(24, 12, dtype=torch.long)
    mask[::3, -3:] = 0
    inputs = {"input_ids": torch.randint(0, 50, (24, 12), generator=gen), "attention_mask": mask}
    return model, inputs, hf.cut_points(model)


CASES = {"mlp": mlp_case, "cnn": cnn_case, "resnet": resnet_case, "gpt2": gpt2_case}


def run(name: str, target: str, device: str, dtype: torch.dtype = F64, case=None):
    """(basis, graph) of model ``name`` on ``device``; ``case``: its (model, inputs, layers)
    when the caller holds them (default: freshly built)."""
    model, inputs, layers = CASES[name]() if case is None else case
    opts = {"device": device, "dtype": dtype, "progress": False, "n_probes": PROBES[name]}
    basis = ia.compute_basis(model, inputs, layers, jacobian_target=target, **opts)
    return basis, ia.build_graph(model, inputs, basis, **opts)


# -------------------------------------------------------------------------- comparisons


def separated(lam: np.ndarray, gap: float) -> np.ndarray:
    """Boolean (k,): Λ_j differs from every other Λ_i by more than gap · max Λ."""
    diff = np.abs(lam[:, None] - lam[None, :])
    np.fill_diagonal(diff, np.inf)
    return diff.min(1) > gap * lam.max()


def assert_same_basis(got, want, rtol: float, ctol: float | None) -> None:
    """Same k; Λ to ``rtol`` relative on the Λ above 1e-3·max Λ; with ``ctol``, every
    separated column of C (:func:`separated`) to ``ctol`` of its largest entry, up to sign."""
    for n in want.layers:
        a, b = got[n], want[n]
        assert a.k == b.k, (n, a.k, b.k)
        big = b.Lambda > 1e-3 * b.Lambda.max()
        np.testing.assert_allclose(a.Lambda[big], b.Lambda[big], rtol=rtol, err_msg=f"Λ at {n}")
        if ctol is None:
            continue
        sign = np.where(np.sum(a.C * b.C, 0) < 0, -1.0, 1.0)
        cols = separated(b.Lambda, C_GAP)
        scale = np.abs(b.C[:, cols]).max(0)
        err = np.abs(a.C[:, cols] * sign[cols] - b.C[:, cols]).max(0) / scale
        assert err.max(initial=0.0) < ctol, f"C at {n}: column error {err.max():.2e}"


def edge_error(got, want) -> float:
    """max |E − E_ref| / E_ref over every section, on the E_ref > EDGE_FLOOR · max E_ref (on the
    leading block both share, where a cut-off kept fewer directions in one of them)."""
    top = float(want.w.max()) ** 2
    errs = []
    for a, b in zip(want.layers[:-1], want.layers[1:]):
        e, ref = got.edge_matrix(a, b) ** 2, want.edge_matrix(a, b) ** 2
        rows, cols = min(e.shape[0], ref.shape[0]), min(e.shape[1], ref.shape[1])
        e, ref = e[:rows, :cols], ref[:rows, :cols]
        big = ref > EDGE_FLOOR * top
        errs.append(float(np.max(np.abs(e[big] - ref[big]) / ref[big])) if big.any() else 0.0)
    return max(errs)


class DeviceFlops(TorchDispatchMode):
    """Sums 2·m·n·k of every aten matrix product, and 2·(output size)·(fan-in) of every
    convolution (forward, and each gradient its backward computes), by device type;
    ``cpu_ops`` keeps the CPU ones for the failure message."""

    PRODUCTS = {torch.ops.aten.mm.default: 0, torch.ops.aten.bmm.default: 0,
                torch.ops.aten.addmm.default: 1, torch.ops.aten.baddbmm.default: 1}

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[str, float] = {}
        self.cpu_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.PRODUCTS:
            flops, result = 2.0 * out.numel() * args[self.PRODUCTS[func]].shape[-1], out
        elif func == torch.ops.aten.convolution.default:
            flops, result = 2.0 * out.numel() * args[1][0].numel(), out
        elif func == torch.ops.aten.convolution_backward.default:   # (grad_output, input, weight, …, output_mask)
            flops, result = 2.0 * args[0].numel() * args[2][0].numel() * sum(args[-1][:2]), args[0]
        else:
            return out
        self.flops[result.device.type] = self.flops.get(result.device.type, 0.0) + flops
        if result.device.type == "cpu":
            self.cpu_ops.append(f"{func.__name__} {tuple(result.shape)}")
        return out

    def cpu_share(self) -> float:
        return self.flops.get("cpu", 0.0) / max(sum(self.flops.values()), 1.0)


@pytest.fixture
def no_tf32():
    """float32 products in float32: TF32 off for matmuls and cuDNN convolutions, restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def cpu64():
    """The CPU float64 reference of every model and target, computed once."""
    return {(m, t): run(m, t, "cpu") for m in MODELS for t in TARGETS}


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_float64_on_cuda_equals_cpu(name, target, cpu64):
    basis, graph = run(name, target, "cuda")
    ref_basis, ref_graph = cpu64[(name, target)]
    assert_same_basis(basis, ref_basis, rtol=1e-9, ctol=1e-7)
    assert graph.n_nodes == ref_graph.n_nodes
    assert edge_error(graph, ref_graph) < 1e-9


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_float32_on_cuda_is_close_to_float64(name, target, cpu64, no_tf32):
    ref_basis, ref_graph = cpu64[(name, target)]
    model, inputs, _ = case = CASES[name]()
    on_ref = ia.build_graph(model, inputs, ref_basis, device="cuda", dtype=torch.float32,
                            n_probes=PROBES[name], progress=False)
    assert edge_error(on_ref, ref_graph) < 5e-5
    basis, graph = run(name, target, "cuda", dtype=torch.float32, case=case)
    assert_same_basis(basis, ref_basis, rtol=2e-5, ctol=None)
    assert edge_error(graph, ref_graph) < F32_EDGE_TOL[name]


def test_bfloat16_on_cuda_runs_and_keeps_lambda(cpu64):
    basis, graph = run("gpt2", "output", "cuda", dtype=torch.bfloat16)
    ref = cpu64[("gpt2", "output")][0]
    for n in ref.layers:
        k = min(basis[n].k, ref[n].k)
        lam, want = basis[n].Lambda[:k], ref[n].Lambda[:k]
        big = want > 1e-3 * want.max()
        np.testing.assert_allclose(lam[big], want[big], rtol=5e-2, err_msg=f"Λ at {n}")
    assert np.isfinite(graph.w).all() and graph.w.max() > 0


def test_integrated_edges_on_cuda_equal_cpu(cpu64):
    model, x, _ = mlp_case()
    basis = cpu64[("mlp", "output")][0]
    graphs = [ia.build_graph(model, x, basis, edge_method="integrated", n_alpha=4, device=d, progress=False)
              for d in ("cuda", "cpu")]
    assert edge_error(*graphs) < 1e-9


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_the_work_runs_on_the_gpu_and_leaves_the_model_alone(name, target):
    case = CASES[name]()
    model = case[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.cuda.reset_peak_memory_stats()
    with DeviceFlops() as counter:
        basis, graph = run(name, target, "cuda", case=case)
    assert counter.flops.get("cuda", 0.0) > 0, "no matrix product ran on the GPU"
    assert counter.cpu_share() < 0.01, (f"{counter.cpu_share():.1%} of the FLOPs ran on the CPU: "
                                        f"{counter.cpu_ops[:10]}")
    assert torch.cuda.max_memory_allocated() > 0
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for n in basis.layers:
        assert isinstance(basis[n].C, np.ndarray) and basis[n].C.dtype == np.float64
        assert basis[n].Lambda.dtype == np.float64
    assert isinstance(graph.w, np.ndarray) and graph.w.dtype == np.float64


def test_model_and_inputs_already_on_cuda(cpu64):
    model, inputs, layers = gpt2_case()
    on_gpu = {k: v.cuda() for k, v in inputs.items()}
    basis, graph = run("gpt2", "output", "cuda", case=(model.cuda(), on_gpu, layers))
    assert_same_basis(basis, cpu64[("gpt2", "output")][0], rtol=1e-9, ctol=1e-7)
    assert edge_error(graph, cpu64[("gpt2", "output")][1]) < 1e-9


def _close(a: float, b: float, scale: float) -> bool:
    """Equal to 1e-8 relative, or to 1e-12 of the loss scale (round-off-sized losses such as
    the reconstruction loss)."""
    return abs(a - b) <= 1e-8 * abs(b) + 1e-12 * scale


def test_ablations_on_cuda_equal_cpu(cpu64):
    model, x, _ = mlp_case()
    graph = cpu64[("mlp", "output")][1]
    part = ia.find_modules(graph, epsilon=1e-4, n_modules=2, seed=0)
    runs = {}
    for dev in ("cuda", "cpu"):
        opts = {"device": dev, "progress": False}
        runs[dev] = (ia.module_cut(model, x, graph, part, n_baseline=4, **opts),
                     ia.module_effects(model, x, graph, part, **opts),
                     ia.edge_ablation(model, x, graph, epsilon=1e-4, **opts),
                     ia.ablation_curve(model, x, graph, "2", **opts))
    (cut, fx, edges, curve), (cut0, fx0, edges0, curve0) = runs["cuda"], runs["cpu"]
    scale = float(curve0.scale)
    pairs = ([(cut.loss, cut0.loss), (cut.inactive_loss, cut0.inactive_loss),
              (edges.loss, edges0.loss), (edges.reconstruction_loss, edges0.reconstruction_loss)]
             + list(zip(cut.baseline_losses, cut0.baseline_losses))
             + list(zip(fx.loss_increase.ravel(), fx0.loss_increase.ravel()))
             + list(zip(curve.loss, curve0.loss)))
    bad = [(a, b) for a, b in pairs if not _close(float(a), float(b), scale)]
    assert not bad, bad[:5]
    assert edges.n_kept == edges0.n_kept


def test_diagnose_on_cuda_equals_cpu():
    model, x, layers = mlp_case()
    reports = [ia.diagnose(model, x, layers, 1e-4, device=d, progress=False) for d in ("cuda", "cpu")]
    for n in layers[:-1]:
        a, b = reports[0].layers[n], reports[1].layers[n]
        assert (a.rank_G, a.rank_M, a.n_free) == (b.rank_G, b.rank_M, b.n_free), n
    assert reports[0].n_free_lower_bound == reports[1].n_free_lower_bound
    assert reports[0].behavioural_rank == reports[1].behavioural_rank


# ------------------------------------------------------------------------------ reports


def same_hits(got: list, want: list, tol: float) -> None:
    """Top examples: scores equal rank by rank to ``tol`` relative; the (sample, position) key
    equal at every rank whose reference score is apart from the other ranks' by more than
    ``tol`` (ties, e.g. the same first token of two sequences, may come in either order), the
    last rank excepted (it may tie with the first hit left out)."""
    assert len(got) == len(want)
    scores = np.array([h.score for h in want])
    np.testing.assert_allclose([h.score for h in got], scores, rtol=tol, atol=tol * scores.max(initial=0.0))
    for r, (a, b) in enumerate(zip(got[:-1], want[:-1])):
        apart = np.delete(np.abs(scores - b.score), r).min(initial=np.inf) > tol * abs(b.score)
        assert a.key == b.key or not apart, (r, a, b)


def report_runs(name: str, device: str, case, graph, part) -> tuple:
    """(direction_attribution of the first 4 directions of every node layer but the output,
    top_examples, module_report) of model ``name`` on ``device``."""
    from intermod.analysis.report import direction_attribution, top_examples

    model, inputs, _ = case
    sel = {n: list(range(min(4, graph.layer_sizes[n]))) for n in graph.layers if n != "output"}
    opts = {"n_alpha": 4, "n_probes": PROBES[name], "device": device}
    return (direction_attribution(model, inputs, graph, sel, **opts),
            top_examples(model, inputs, graph, part.membership, top_k=8, device=device),
            ia.module_report(model, inputs, graph, part, top_k=8, **opts))


@pytest.mark.parametrize("name", MODELS)
def test_reports_on_cuda_equal_cpu_and_run_on_the_gpu(name, cpu64):
    """Module reports, attribution and top examples on cuda against the CPU, float64 both: the
    same arithmetic up to the summation order of cuBLAS against the CPU BLAS (a relative
    perturbation of order 1e-15·√n), so energies, input shares and top-example scores agree to
    1e-9 relative (entries above 1e-12 of the largest), and the hits rank for rank where their
    scores are apart. Of the FLOPs at most 1 % on the CPU (the conv colouring's structural probes
    are the only CPU products by design); the model neither moved nor changed; results are CPU
    numpy float64 arrays."""
    case = CASES[name]()
    model = case[0]
    graph = cpu64[(name, "output")][1]
    part = ia.find_modules(graph, epsilon=1e-4, n_modules=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    att0, top0, rep0 = report_runs(name, "cpu", case, graph, part)
    with DeviceFlops() as counter:
        att, top, rep = report_runs(name, "cuda", case, graph, part)
    assert counter.flops.get("cuda", 0.0) > 0, "no matrix product ran on the GPU"
    assert counter.cpu_share() < 0.01, (f"{counter.cpu_share():.1%} of the FLOPs ran on the CPU: "
                                        f"{counter.cpu_ops[:10]}")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    assert att.exact == att0.exact and att.n_samples == att0.n_samples
    for part_name in ("energy", "by_position", "by_token"):
        for layer, want in getattr(att0, part_name).items():
            got = getattr(att, part_name)[layer]
            assert isinstance(got, np.ndarray) and got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * float(np.abs(want).max()),
                                       err_msg=f"{part_name} at {layer}")
    assert top.positions == top0.positions
    for c, hits in top0.modules.items():
        same_hits(top.modules[c], hits, 1e-9)
    for layer, per_dir in top0.directions.items():
        for i, hits in per_dir.items():
            same_hits(top.directions[layer][i], hits, 1e-9)
    assert len(rep.modules) == len(rep0.modules) >= 2
    for m, m0 in zip(rep.modules, rep0.modules):
        for shares in ("inputs", "input_positions", "input_tokens"):
            a, b = getattr(m, shares), getattr(m0, shares)
            assert a.keys() == b.keys(), (m.id, shares)
            np.testing.assert_allclose([a[k] for k in b], list(b.values()), rtol=1e-9, atol=1e-12,
                                       err_msg=f"module {m.id} {shares}")
        if m0.input_map is not None:
            assert m.input_map.dtype == np.float64
            np.testing.assert_allclose(m.input_map, m0.input_map, rtol=1e-9, atol=1e-12)
        same_hits(m.hits, m0.hits, 1e-9)
