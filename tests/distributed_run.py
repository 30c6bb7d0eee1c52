"""The run of tests/test_distributed.py, in a module the spawned processes can import by name
(the test module itself is imported by path, which a child process cannot repeat)."""

import numpy as np
import torch
import torch.distributed as dist
from intermod import analysis as ia
from torch import nn

LAYERS = ["0", "2", "4", "output"]


def setup():
    """The same model and data in every process, whatever the default dtype there."""
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    model = nn.Sequential(nn.Linear(5, 6, **f64), nn.ReLU(), nn.Linear(6, 4, **f64), nn.Tanh(), nn.Linear(4, 3, **f64))
    X = torch.randn(70, 5, **f64)   # 9 batches of 8: the two ranks get 5 and 4
    return model, X


def run(target):
    model, X = setup()
    seen = []
    basis = ia.compute_basis(model, X, LAYERS, jacobian_target=target, batch_size=8, progress=False)
    graph = ia.build_graph(model, X, basis, edge_method="integrated", n_alpha=3, batch_size=8, progress=False,
                           callback=lambda stage, done, total: seen.append(done))
    # batches done = the last count reported (heartbeats inside a batch repeat the last report)
    result = {f"{k}/{n}": getattr(basis[n], k) for n in LAYERS for k in ("G", "M", "Lambda", "C")}
    edges = {f"w/{a}->{b}": graph.edge_matrix(a, b) for a, b in zip(LAYERS, LAYERS[1:])}
    return result | edges, max(seen)


def worker(rank, world, init, out, target):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result, n_batches = run(target)
        np.savez(f"{out}{rank}.npz", n_batches=n_batches, **result)
    finally:
        dist.destroy_process_group()

