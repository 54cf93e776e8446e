"""`ebsparse.ops.sparse_linear`: provider x shape x pattern x phase, each row timed alternately with
dense PyTorch on the same inputs (bench/timing.py).

Phases: ``step`` is one training step (forward + grad-input + grad-weight, gradients set to None
first as ``optimizer.zero_grad()`` leaves them) with the output's sum as the loss; ``step
dense-grad`` the same with a fixed random output gradient (what a loss further on hands back;
``.sum()``'s single broadcast value is one the native kernels read without materialising it), so
these rows are the speed-up a layer inside a network sees; ``forward``, ``grad-input``,
``grad-weight`` and ``both gradients`` are the kernels alone against the ATen call doing the same
job (bench/phases.py). "useful GFLOP" counts only the kept weights.
"""

import pytest
import torch

from bench import settings
from bench.phases import LINEAR_PHASES, linear_calls
from bench.providers import (STEP_PROVIDERS, device_of, linear_step, make_mask, provider_params,
                             skip_meaningless)
from bench.settings import LINEAR_SHAPES, SPARSE_SPARSITIES, SPARSITIES, pattern_id
from bench.timing import paired, synchronized

OP = "linear"
DENSE_GRAD_PROVIDERS = ["dense", "ebsparse-auto", "ebsparse-native", "ebsparse-triton"]
KERNEL_PROVIDERS = ["dense", "ebsparse-native", "ebsparse-triton"]


def _step_row(benchmark, provider, shape, sparsity, upstream: bool):
    skip_meaningless(provider, sparsity)
    device = device_of(provider)
    torch.manual_seed(0)
    x = torch.randn(shape.batch, shape.in_features, device=device)
    w = torch.randn(shape.out_features, shape.in_features, device=device)
    mask = make_mask(w, sparsity)
    grad = torch.randn(shape.batch, shape.out_features, device=device) if upstream else None
    step, dense = (synchronized(linear_step(p, x, w, mask, grad), device) for p in (provider, "dense"))
    phase = "step dense-grad" if upstream else "step"
    rounds = settings.rounds(settings.PEER_ROUNDS if provider in ("torch-csr", "sparseprop") else settings.LAYER_ROUNDS)
    paired(benchmark, step, dense, group=f"linear {shape} {phase} {pattern_id(sparsity)}", provider=provider,
           rounds=rounds, gflop=3 * 2 * int(mask.sum()) * shape.batch / 1e9)


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=pattern_id)
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("provider", provider_params(STEP_PROVIDERS, OP))
def test_step(benchmark, provider, shape, sparsity):
    _step_row(benchmark, provider, shape, sparsity, upstream=False)


@pytest.mark.parametrize("sparsity", SPARSE_SPARSITIES, ids=pattern_id)
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("provider", provider_params(DENSE_GRAD_PROVIDERS, OP))
def test_step_dense_grad(benchmark, provider, shape, sparsity):
    _step_row(benchmark, provider, shape, sparsity, upstream=True)


@pytest.mark.parametrize("phase", LINEAR_PHASES)
@pytest.mark.parametrize("sparsity", SPARSE_SPARSITIES, ids=pattern_id)
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("provider", provider_params(KERNEL_PROVIDERS, OP))
def test_kernel_phase(benchmark, provider, shape, sparsity, phase):
    device = device_of(provider)
    kernels = None
    if provider == "ebsparse-triton":
        from ebsparse import triton as kernels
    sparse, dense, gflop = linear_calls(sparsity, op=kernels, shape=shape, device=device)
    if phase not in sparse:
        pytest.skip(f"{provider} has no fused {phase} kernel")
    call = dense[phase] if provider == "dense" else sparse[phase]
    paired(benchmark, synchronized(call, device), synchronized(dense[phase], device),
           group=f"linear {shape} {phase} {pattern_id(sparsity)}", provider=provider,
           rounds=settings.rounds(settings.LAYER_ROUNDS), gflop=gflop * (2 if phase == "both gradients" else 1))
