import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INTERMOD_CACHE", os.path.join(os.path.dirname(__file__), "..", "out", "cache"))

# INTERMOD_TEST_THREADS=N runs the suite with N intra-op threads in this process and in every
# server or worker it starts (OMP_NUM_THREADS is inherited): the suite must pass for any N, since
# the summation order of BLAS kernels, and so the round-off, depends on it.
if os.environ.get("INTERMOD_TEST_THREADS"):
    _threads = int(os.environ["INTERMOD_TEST_THREADS"])
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype inside one test only (no global state leaks)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
