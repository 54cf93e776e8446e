"""`ebsparse.ops.sparse_conv2d`: provider x shape x pattern x phase, each row timed alternately with
dense PyTorch on the same inputs (bench/timing.py). Phases as in test_sparse_linear.py (conv has no
fused "both gradients" kernel); the dense kernel-phase calls are oneDNN's convolution and
``aten.convolution_backward``.
"""

import pytest
import torch

from bench import settings
from bench.phases import CONV_PHASES, conv_calls
from bench.providers import (STEP_PROVIDERS, conv_step, device_of, make_mask, provider_params,
                             skip_meaningless)
from bench.settings import CONV_SHAPES, SPARSE_SPARSITIES, SPARSITIES, pattern_id
from bench.timing import paired, synchronized

OP = "conv2d"
DENSE_GRAD_PROVIDERS = ["dense", "ebsparse-auto", "ebsparse-native", "ebsparse-triton"]
KERNEL_PROVIDERS = ["dense", "ebsparse-native", "ebsparse-triton"]


def _step_row(benchmark, provider, shape, sparsity, upstream: bool):
    skip_meaningless(provider, sparsity)
    device = device_of(provider)
    torch.manual_seed(0)
    x = torch.randn(shape.batch, shape.in_channels, shape.size, shape.size, device=device)
    w = torch.randn(shape.out_channels, shape.in_channels, shape.kernel, shape.kernel, device=device)
    mask = make_mask(w, sparsity)
    out_size = shape.size + 2 * shape.padding - shape.kernel + 1
    grad = torch.randn(shape.batch, shape.out_channels, out_size, out_size, device=device) if upstream else None
    step, dense = (synchronized(conv_step(p, x, w, mask, shape.padding, grad), device) for p in (provider, "dense"))
    phase = "step dense-grad" if upstream else "step"
    rounds = settings.rounds(settings.PEER_ROUNDS if provider in ("torch-csr", "sparseprop") else settings.LAYER_ROUNDS)
    paired(benchmark, step, dense, group=f"conv {shape} {phase} {pattern_id(sparsity)}", provider=provider,
           rounds=rounds, gflop=3 * 2 * int(mask.sum()) * shape.batch * shape.output_pixels / 1e9)


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=pattern_id)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("provider", provider_params(STEP_PROVIDERS, OP))
def test_step(benchmark, provider, shape, sparsity):
    _step_row(benchmark, provider, shape, sparsity, upstream=False)


@pytest.mark.parametrize("sparsity", SPARSE_SPARSITIES, ids=pattern_id)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("provider", provider_params(DENSE_GRAD_PROVIDERS, OP))
def test_step_dense_grad(benchmark, provider, shape, sparsity):
    _step_row(benchmark, provider, shape, sparsity, upstream=True)


@pytest.mark.parametrize("phase", CONV_PHASES)
@pytest.mark.parametrize("sparsity", SPARSE_SPARSITIES, ids=pattern_id)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("provider", provider_params(KERNEL_PROVIDERS, OP))
def test_kernel_phase(benchmark, provider, shape, sparsity, phase):
    device = device_of(provider)
    kernels = None
    if provider == "ebsparse-triton":
        from ebsparse import triton as kernels
    sparse, dense, gflop = conv_calls(sparsity, op=kernels, shape=shape, device=device)
    call = dense[phase] if provider == "dense" else sparse[phase]
    paired(benchmark, synchronized(call, device), synchronized(dense[phase], device),
           group=f"conv {shape} {phase} {pattern_id(sparsity)}", provider=provider,
           rounds=settings.rounds(settings.LAYER_ROUNDS), gflop=gflop)
