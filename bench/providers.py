"""Benchmark providers: one training step (forward + grad-input + grad-weight) of a sparse layer,
by ebsparse's backends, by the pure-PyTorch reference and by the peers a user would otherwise
reach for; and why a provider cannot run here (a skip reason, so no row silently disappears).

Providers: ``dense`` (PyTorch on the masked weight: the baseline of every row), ``ebsparse-auto``,
``ebsparse-native``, ``ebsparse-triton`` (through the modules, as users run them),
``reference`` (``ebsparse.ops``' pure-PyTorch oracle), ``torch-csr`` (PyTorch's own sparse
route), ``sparseprop`` (the CPU sparse-backprop library, when installed).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import ebsparse
from ebsparse.formats import random_mask
from ebsparse.ops import prune_2_4, sparse_conv2d_reference, sparse_linear_reference

HAS_SPARSEPROP = importlib.util.find_spec("sparseprop") is not None
STEP_PROVIDERS = ["dense", "ebsparse-auto", "ebsparse-native", "ebsparse-triton", "reference", "torch-csr",
                  "sparseprop"]
# Run after everything else (bench/conftest.py): their thread pools must not disturb the other rows.
PEERS = ("torch-csr", "sparseprop")


def device_of(provider: str) -> torch.device:
    """Triton rows run on the GPU (on the CPU Triton is an interpreter, a testing mode); the rest on the CPU."""
    return torch.device("cuda" if provider.endswith("triton") else "cpu")


@functools.cache
def unavailable_reason(provider: str, op: str) -> str | None:
    """Why `provider` cannot run `op` ("linear", "conv2d", "2:4") here, or None."""
    if provider == "sparseprop" and not HAS_SPARSEPROP:
        return "sparseprop not installed (pip install pybind11; pip install --no-build-isolation sparseprop)"
    if not provider.startswith("ebsparse-") or provider == "ebsparse-auto":
        return None
    backend = provider.split("-", 1)[1]
    device = device_of(provider)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device (Triton on the CPU is the interpreter, a testing mode)"
    if op == "2:4" and backend == "triton":
        from ebsparse import triton as kernels

        return "; ".join(kernels.unavailable_reasons(device)) or None
    from ebsparse.backends import registered_backends

    # The 2:4 rows call the kernels directly; the backend's reasons for compress_2_4 cover them all
    # (asking it also loads the extension, which importing ebsparse does not).
    reasons = registered_backends()[backend].unavailable_reasons("compress_2_4" if op == "2:4" else op, device,
                                                                 torch.float32)
    return "; ".join(reasons) or None


def provider_params(providers: list[str], op: str) -> list:
    """`providers` as pytest parameters, each that cannot run here marked skip with its reason."""
    params = []
    for name in providers:
        reason = unavailable_reason(name, op)
        params.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=reason)) if reason else name)
    return params


def skip_meaningless(provider: str, sparsity) -> None:
    if provider in ("torch-csr", "sparseprop", "ebsparse-native", "ebsparse-triton") and sparsity == 0.0:
        pytest.skip("a sparse kernel at 0% sparsity says nothing")


def make_mask(weight: torch.Tensor, sparsity: float | str) -> torch.Tensor:
    if sparsity == "2:4":
        return prune_2_4(weight)
    mask = random_mask(weight.shape, 1.0 - float(sparsity), generator=torch.Generator().manual_seed(0))
    return mask.to(weight.device)


def training_step(loss, *tensors: torch.Tensor, upstream: torch.Tensor | None = None):
    """One step as a training loop runs it: the gradients of `tensors` set to None first (what
    ``optimizer.zero_grad()`` does by default), so backward hands over fresh gradients instead of
    adding into the last step's; then ``loss().backward()``. With `upstream`, ``loss()`` is the
    layer's output and `upstream` its gradient (a dense one, as a real loss further on hands back;
    ``.sum()``'s is a single value broadcast, which kernels may read without materialising it)."""

    def step():
        for t in tensors:
            t.grad = None
        out = loss()
        if upstream is None:
            out = out.sum()
        out.backward(upstream)
    return step


def _dense_linear(w: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def _dense_conv(w: torch.Tensor, padding: int) -> torch.nn.Conv2d:
    layer = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding=padding, bias=False, device=w.device)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def linear_step(provider: str, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                upstream: torch.Tensor | None = None):
    """A zero-argument callable running one fwd+bwd of the linear layer with `provider`; the loss is
    the output's sum, or `upstream` is its gradient (see training_step)."""
    w = (weight * mask).detach().requires_grad_()
    x = x.detach().requires_grad_()
    if provider == "dense":
        return training_step(lambda: F.linear(x, w * mask), x, w, upstream=upstream)
    if provider == "reference":
        return training_step(lambda: sparse_linear_reference(x, w, None, mask), x, w, upstream=upstream)
    if provider.startswith("ebsparse"):
        # through the module, as users run it (auto resolves once, outside the timing)
        layer = ebsparse.SparseLinear.from_dense(_dense_linear(w.detach()), mask=mask,
                                                 backend=provider.split("-", 1)[1])
        step = training_step(lambda: layer(x), x, *layer.parameters(), upstream=upstream)
        step()
        return step
    if provider == "torch-csr":
        # PyTorch's own sparse path: y^T = W_csr @ x^T, weight gradient through the sparse tensor.
        w_sparse = w.detach().to_sparse_coo().coalesce().requires_grad_()
        return training_step(lambda: torch.sparse.mm(w_sparse, x.t()), x, w_sparse,
                             upstream=None if upstream is None else upstream.t())
    if provider == "sparseprop":
        from sparseprop.modules.linear import SparseLinear

        layer = SparseLinear.from_dense(_dense_linear(w.detach()))
        return training_step(lambda: layer(x), x, *layer.parameters(), upstream=upstream)
    raise ValueError(provider)


def conv_step(provider: str, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, padding: int,
              upstream: torch.Tensor | None = None):
    """A zero-argument callable running one fwd+bwd of the conv layer with `provider`; the loss is
    the output's sum, or `upstream` is its gradient (not for the peers; see training_step)."""
    w = (weight * mask).detach().requires_grad_()
    x = x.detach().requires_grad_()
    if provider == "dense":
        return training_step(lambda: F.conv2d(x, w * mask, None, 1, padding), x, w, upstream=upstream)
    if provider == "reference":
        return training_step(lambda: sparse_conv2d_reference(x, w, None, mask, 1, padding), x, w,
                             upstream=upstream)
    if provider.startswith("ebsparse"):
        layer = ebsparse.SparseConv2d.from_dense(_dense_conv(w.detach(), padding), mask=mask,
                                                 backend=provider.split("-", 1)[1])
        step = training_step(lambda: layer(x), x, *layer.parameters(), upstream=upstream)
        step()
        return step
    if upstream is not None:
        raise ValueError(f"{provider}: only dense, reference and ebsparse conv steps take an upstream gradient")
    if provider == "torch-csr":
        # im2col + torch.sparse.mm, the route PyTorch offers for a sparse conv weight
        w_sparse = w.detach().reshape(w.shape[0], -1).to_sparse_coo().coalesce().requires_grad_()

        def output():
            cols = F.unfold(x, w.shape[2:], padding=padding)  # (N, Ci*kh*kw, L)
            flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)
            return torch.sparse.mm(w_sparse, flat)
        return training_step(output, x, w_sparse)
    if provider == "sparseprop":
        from sparseprop.modules.conv2d import SparseConv2d

        layer = SparseConv2d.from_dense(_dense_conv(w.detach(), padding), vectorizing_over_on=False)
        return training_step(lambda: layer(x), x, *layer.parameters())
    raise ValueError(provider)
