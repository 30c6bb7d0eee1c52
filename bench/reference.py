"""Time the reference implementation (ApolloResearch/rib) on the benchmark MLP, in its own process.

    python bench/reference.py --width 100 --n 2000 [--rib /path/to/rib/checkout] [--json out.json]

Run it with an interpreter that has rib's dependencies (a separate venv: torch, numpy, pydantic,
jaxtyping, einops, fancy_einsum, tqdm, pyyaml); rib's imports of mpi4py and transformer_lens
are not used on this path and are stubbed when missing. It builds rib's MLP 784-w-w-10 with the
same weights and inputs as ``bench/run.py`` (float64, biases folded as rib requires), and runs
rib's own pipeline stages as its ``rib_builder`` does: dataset means, Gram matrices,
basis ``"jacobian"`` (gradient, centred), edges ``"squared"``. Prints one JSON line with the
seconds of the basis (means + Grams + C) and edge stages. When rib cannot be imported it prints
a message and exits with status 0 (skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _stub_unused_imports() -> None:
    """rib imports mpi4py (distributed runs) and transformer_lens (pretrained transformers) at
    module level; neither runs for a single-process MLP."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        class Intracomm:
            def Get_rank(self):
                return 0

            def Get_size(self):
                return 1

        mpi = types.ModuleType("mpi4py.MPI")
        mpi.Intracomm = Intracomm
        mpi.COMM_WORLD = Intracomm()
        pkg = types.ModuleType("mpi4py")
        pkg.MPI = mpi
        sys.modules.update({"mpi4py": pkg, "mpi4py.MPI": mpi})
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        tl = types.ModuleType("transformer_lens")
        tl.HookedTransformer = type("HookedTransformer", (), {})
        sys.modules["transformer_lens"] = tl


def run(width: int, n: int, batch_size: int = 512) -> dict:
    import torch
    from rib.data_accumulator import collect_dataset_means, collect_gram_matrices, collect_interaction_edges
    from rib.hook_manager import HookedModel
    from rib.interaction_algos import calculate_interaction_rotations
    from rib.models import MLP, MLPConfig
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(HERE))
    from run import inputs, mlp  # the same weights and inputs as intermod's benchmark

    torch.set_default_dtype(torch.float64)
    ours = mlp(width)
    X = inputs(n)
    cfg = MLPConfig(hidden_sizes=[width, width], input_size=784, output_size=10, activation_fn="relu",
                    bias=True, fold_bias=False, dtype=torch.float64)
    model = MLP(cfg)
    with torch.no_grad():
        for layer, lin in zip(model.layers, [ours[0], ours[2], ours[4]]):
            layer.W.copy_(lin.weight.T)      # rib's layers compute x @ W + b
            layer.b.copy_(lin.bias)
    model.fold_bias()
    model.eval()
    with torch.no_grad():   # the two models agree before timing anything
        assert torch.allclose(model(X[:64]), ours(X[:64]), atol=1e-10)
    hooked = HookedModel(model)
    node_layers = ["layers.0", "layers.1", "layers.2", "output"]
    sections = node_layers[:-1]
    loader = DataLoader(TensorDataset(X, torch.zeros(n, dtype=torch.long)), batch_size=batch_size, shuffle=False)
    kw = dict(hooked_model=hooked, data_loader=loader, dtype=torch.float64, device="cpu")
    for center in (True, False):
        t0 = time.perf_counter()
        means = collect_dataset_means(module_names=sections, collect_output_dataset_means=True,
                                      hook_names=sections, **kw) if center else None
        grams = collect_gram_matrices(module_names=sections, collect_output_gram=True, hook_names=sections,
                                      means=means, **kw)
        try:
            rotations = calculate_interaction_rotations(
                gram_matrices=grams, section_names=sections, node_layers=node_layers, n_intervals=0,
                integration_methods=["gradient"] * len(node_layers), truncation_threshold=1e-15,
                rotate_final_node_layer=True, basis_formula="jacobian", center=center, means=means, **kw)
            break
        except AssertionError as err:   # rib looks for the constant direction among the Gram's
            # eigenvectors, which fails when a data direction has variance ~1 (as N(0, 1) inputs do)
            print(f"rib with center=True failed ({err}); timing center=False", file=sys.stderr)
    t1 = time.perf_counter()
    edges = collect_interaction_edges(
        interaction_rotations=rotations, n_intervals=0, integration_methods=["gradient"] * len(sections),
        section_names=sections, data_set_size=n, edge_formula="squared", **kw)
    t2 = time.perf_counter()
    return {"tool": "rib", "width": width, "n": n, "center": center, "basis_s": round(t1 - t0, 3), "edges_s": round(t2 - t1, 3),
            "total_s": round(t2 - t0, 3), "k": [None if r.C is None else r.C.shape[1] for r in rotations],
            "edge_shapes": [list(e.E_hat.shape) for e in edges]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rib", default=None, help="a rib checkout to put on sys.path")
    ap.add_argument("--json", default=None, help="append the result to this JSON-lines file")
    args = ap.parse_args()
    if args.rib:
        sys.path.insert(0, args.rib)
    _stub_unused_imports()
    try:
        import rib  # noqa: F401
    except ImportError as err:
        print(f"reference skipped: rib is not importable ({err}); pass --rib PATH", file=sys.stderr)
        return
    res = run(args.width, args.n)
    line = json.dumps(res)
    print(line)
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
