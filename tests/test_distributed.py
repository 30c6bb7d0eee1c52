"""Data-parallel accumulation over 2 processes (gloo) equals one process."""

import numpy as np
import pytest
import torch.multiprocessing as mp
from distributed_run import run, worker


@pytest.mark.parametrize("target", ["output", "next_layer"])
def test_two_processes_give_the_single_process_result(tmp_path, target):
    mp.spawn(worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path / "rank"), target), nprocs=2)
    single, n_batches = run(target)
    assert n_batches == 9
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert int(got["n_batches"]) == (5, 4)[rank]       # each process did its own share
        for key, want in single.items():
            # dense matrices, not edge lists: the order of summation differs between the runs
            np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=1e-13, err_msg=f"rank {rank}: {key}")
