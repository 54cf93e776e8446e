"""The peers on the shapes of test_kernels.py: PyTorch's own CSR route and sparseprop (the CPU
sparse-backprop library). Their speed-ups are against the dense rows of test_kernels.py."""

import pytest

from bench.providers import SPARSITIES, bench_conv_256_3x3, bench_linear_1024

PROVIDERS = ["torch-csr", "sparseprop"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
def test_peer_linear_1024(record, provider, sparsity):
    bench_linear_1024(record, provider, sparsity)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
def test_peer_conv_256_3x3(record, provider, sparsity):
    bench_conv_256_3x3(record, provider, sparsity)
