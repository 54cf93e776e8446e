"""Benchmark providers: one training step (forward + grad-input + grad-weight) of a sparse layer,
by ebsparse backends and by the peers a user would otherwise reach for."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

import ebsparse
from ebsparse.formats import build_index, random_mask
from ebsparse.ops import prune_2_4

HAS_SPARSEPROP = importlib.util.find_spec("sparseprop") is not None


def make_mask(weight: torch.Tensor, sparsity: float | str) -> torch.Tensor:
    if sparsity == "2:4":
        return prune_2_4(weight)
    return random_mask(weight.shape, 1.0 - float(sparsity), generator=torch.Generator().manual_seed(0))


def linear_step(provider: str, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor):
    """A zero-argument callable running one fwd+bwd of the linear layer with `provider`."""
    w = (weight * mask).detach().requires_grad_()
    x = x.detach().requires_grad_()
    if provider == "dense":
        def step():
            F.linear(x, w * mask).sum().backward()
        return step
    if provider.startswith("ebsparse"):
        backend = provider.split("-", 1)[1]
        index = build_index(mask)

        def step():
            ebsparse.ops.sparse_linear(x, w, None, mask, index=index, backend=backend).sum().backward()
        step()  # resolve auto once, outside the timing
        return step
    if provider == "torch-csr":
        # PyTorch's own sparse path: y^T = W_csr @ x^T, weight gradient through the sparse tensor.
        w_sparse = w.detach().to_sparse_coo().coalesce().requires_grad_()

        def step():
            torch.sparse.mm(w_sparse, x.t()).sum().backward()
        return step
    if provider == "sparseprop":
        from sparseprop.modules.linear import SparseLinear

        layer = SparseLinear.from_dense(_dense_linear(w.detach()))

        def step():
            layer(x).sum().backward()
        return step
    raise ValueError(provider)


def _dense_linear(w: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def _dense_conv(w: torch.Tensor, padding: int) -> torch.nn.Conv2d:
    layer = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding=padding, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def conv_step(provider: str, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, padding: int):
    w = (weight * mask).detach().requires_grad_()
    x = x.detach().requires_grad_()
    if provider == "dense":
        def step():
            F.conv2d(x, w * mask, None, 1, padding).sum().backward()
        return step
    if provider.startswith("ebsparse"):
        backend = provider.split("-", 1)[1]
        index = build_index(mask)

        def step():
            ebsparse.ops.sparse_conv2d(x, w, None, mask, 1, padding, index=index, backend=backend).sum().backward()
        step()
        return step
    if provider == "torch-csr":
        # im2col + torch.sparse.mm, the route PyTorch offers for a sparse conv weight
        w_sparse = w.detach().reshape(w.shape[0], -1).to_sparse_coo().coalesce().requires_grad_()
        n, _, h, wd = x.shape

        def step():
            cols = F.unfold(x, w.shape[2:], padding=padding)  # (N, Ci*kh*kw, L)
            flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)
            torch.sparse.mm(w_sparse, flat).sum().backward()
        return step
    if provider == "sparseprop":
        from sparseprop.modules.conv2d import SparseConv2d

        layer = SparseConv2d.from_dense(_dense_conv(w.detach(), padding), vectorizing_over_on=False)

        def step():
            layer(x).sum().backward()
        return step
    raise ValueError(provider)


SPARSITIES = [0.0, 0.5, 0.75, 0.9, 0.95, "2:4"]


def skip_unavailable(provider: str, sparsity) -> None:
    import pytest

    if provider == "sparseprop" and not HAS_SPARSEPROP:
        pytest.skip("sparseprop not installed (pip install pybind11; pip install --no-build-isolation sparseprop)")
    if provider in ("torch-csr", "sparseprop", "ebsparse-native") and sparsity == 0.0:
        pytest.skip("a sparse kernel at 0% sparsity says nothing")


def bench_linear_1024(benchmark, record, provider: str, sparsity) -> None:
    """linear 1024->1024 on a (1024, 1024) input; useful GFLOP = 3 ops x 2 x nnz x batch."""
    skip_unavailable(provider, sparsity)
    torch.manual_seed(0)
    x, w = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mask = make_mask(w, sparsity)
    step = linear_step(provider, x, w, mask)
    benchmark.group = f"linear 1024x1024 sparsity={sparsity}"
    benchmark.pedantic(step, rounds=9, warmup_rounds=2)
    gflop = 3 * 2 * int(mask.sum()) * 1024 / 1e9
    record(f"linear sparsity={sparsity}", provider, benchmark.stats.stats.min, gflop)


def bench_conv_256_3x3(benchmark, record, provider: str, sparsity) -> None:
    """conv 256->256 3x3 pad 1 on (8, 256, 32, 32); useful GFLOP = 3 ops x 2 x nnz x N·Ho·Wo."""
    skip_unavailable(provider, sparsity)
    torch.manual_seed(0)
    x, w = torch.randn(8, 256, 32, 32), torch.randn(256, 256, 3, 3)
    mask = make_mask(w, sparsity)
    step = conv_step(provider, x, w, mask, padding=1)
    benchmark.group = f"conv 256x256x3x3 sparsity={sparsity}"
    benchmark.pedantic(step, rounds=7, warmup_rounds=1)
    gflop = 3 * 2 * int(mask.sum()) * 8 * 32 * 32 / 1e9
    record(f"conv sparsity={sparsity}", provider, benchmark.stats.stats.min, gflop)
