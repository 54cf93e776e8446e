"""The peers on the shapes of test_kernels.py: PyTorch's own CSR route and sparseprop.

Shapes from the kernel issue: linear 1024->1024 on a (1024, 1024) input; conv 256->256 3x3 pad 1
on (8, 256, 32, 32). "useful GFLOP" counts only the kept weights (2 * nnz * outputs, x3 for the
forward, grad-input and grad-weight). Peer libraries run in test_peers.py, collected after
this file, so that their thread pools cannot disturb the dense and ebsparse rows.
"""

import pytest
import torch

from bench.providers import HAS_SPARSEPROP, conv_step, linear_step, make_mask

SPARSITIES = [0.0, 0.5, 0.75, 0.9, 0.95, "2:4"]
PROVIDERS = ["torch-csr", "sparseprop"]


def _skip_unavailable(provider, sparsity):
    if provider == "sparseprop" and not HAS_SPARSEPROP:
        pytest.skip("sparseprop not installed (pip install pybind11; pip install --no-build-isolation sparseprop)")
    if provider in ("torch-csr", "sparseprop", "ebsparse-native") and sparsity == 0.0:
        pytest.skip("a sparse kernel at 0% sparsity says nothing")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
def test_peer_linear_1024(benchmark, record, provider, sparsity):
    _skip_unavailable(provider, sparsity)
    torch.manual_seed(0)
    x, w = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mask = make_mask(w, sparsity)
    step = linear_step(provider, x, w, mask)
    benchmark.group = f"linear 1024x1024 sparsity={sparsity}"
    benchmark.pedantic(step, rounds=9, warmup_rounds=2)
    gflop = 3 * 2 * int(mask.sum()) * 1024 / 1e9
    record(f"linear sparsity={sparsity}", provider, benchmark.stats.stats.min, gflop)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
def test_peer_conv_256_3x3(benchmark, record, provider, sparsity):
    _skip_unavailable(provider, sparsity)
    torch.manual_seed(0)
    x, w = torch.randn(8, 256, 32, 32), torch.randn(256, 256, 3, 3)
    mask = make_mask(w, sparsity)
    step = conv_step(provider, x, w, mask, padding=1)
    benchmark.group = f"conv 256x256x3x3 sparsity={sparsity}"
    benchmark.pedantic(step, rounds=7, warmup_rounds=1)
    gflop = 3 * 2 * int(mask.sum()) * 8 * 32 * 32 / 1e9
    record(f"conv sparsity={sparsity}", provider, benchmark.stats.stats.min, gflop)
