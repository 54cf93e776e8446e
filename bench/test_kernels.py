"""Sparse linear and conv training steps (forward + grad-input + grad-weight) vs dense PyTorch; the
loss is the output's sum, and a last set of rows repeats some with a dense output gradient.

Shapes from the kernel issue: linear 1024->1024 on a (1024, 1024) input; conv 256->256 3x3 pad 1
on (8, 256, 32, 32). "useful GFLOP" counts only the kept weights. Every provider's step starts with
its gradients set to None, as ``optimizer.zero_grad()`` leaves them (``bench.providers.training_step``). Each sparse row is timed alternately
with dense in the same rounds (``bench.providers.paired_minimum``) and its speed-up is against that
paired dense time, so a noisy stretch of a shared machine cannot favour either side. Peer libraries run in
test_peers.py, collected after this file, so that their thread pools cannot disturb these rows.
"""

import pytest

from bench.providers import SPARSITIES, bench_conv_256_3x3, bench_linear_1024

PROVIDERS = ["dense", "ebsparse-auto", "ebsparse-native"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
def test_linear_1024(record, provider, sparsity):
    bench_linear_1024(record, provider, sparsity)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
def test_conv_256_3x3(record, provider, sparsity):
    bench_conv_256_3x3(record, provider, sparsity)


# The same steps with a dense upstream gradient (a fixed random one, as a loss further on hands back)
# instead of `.sum()`'s single broadcast value, which the native kernels read without materialising
# it: these rows are the speed-up a layer inside a network sees. Dense gets the same gradient.
DENSE_GRAD_SPARSITIES = [0.9, 0.95, "2:4"]


@pytest.mark.parametrize("sparsity", DENSE_GRAD_SPARSITIES, ids=str)
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_dense_upstream_gradient(record, layer, sparsity):
    bench = bench_linear_1024 if layer == "linear" else bench_conv_256_3x3
    bench(record, "ebsparse-native", sparsity, upstream="dense")
