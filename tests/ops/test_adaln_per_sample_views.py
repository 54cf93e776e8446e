"""The native adaLN kernel ops (layer_norm_modulate, gated_residual, residual_norm_modulate, forward
and backward) read their per-sample vectors (shift, scale, gate: (B, C)) in place when each sample's
values are contiguous, as in DiT, whose modulation (B, 6C) is split by `chunk` into views with a row
stride of 6C: results must be bit-identical to the same values passed as contiguous tensors, also for
a row broadcast to every sample (stride 0) and for a transposed view (copied, not read in place)."""

from __future__ import annotations

import pytest
import torch

from ebsparse.backends.extension import extension_error

pytestmark = pytest.mark.skipif(extension_error() is not None, reason=str(extension_error()))

EPS = 1e-6


def _views(b, c, dtype, layout, g):
    """Three (B, C) per-sample tensors in `layout`, and contiguous copies of them."""
    if layout == "chunk":  # DiT: columns of a (B, 6C) modulation
        views = torch.randn(b, 6 * c, generator=g, dtype=dtype).chunk(6, dim=1)[1:4]
    elif layout == "broadcast":  # one row for every sample
        views = [torch.randn(1, c, generator=g, dtype=dtype).expand(b, c) for _ in range(3)]
    else:  # transposed: values strided within a sample
        views = [torch.randn(c, b, generator=g, dtype=dtype).t() for _ in range(3)]
    return list(views), [v.contiguous() for v in views]


def _run_all(ops, x, branch, dy, dy2, per_sample):
    shift, scale, gate = per_sample
    y, mean, rstd = ops.layer_norm_modulate(x, shift, scale, EPS)
    ln_grads = ops.layer_norm_modulate_backward(dy, x, mean, rstd, scale)
    gated = ops.gated_residual(x, gate, branch)
    gated_grads = ops.gated_residual_backward(dy, gate, branch)
    out, y2, mean2, rstd2 = ops.residual_norm_modulate(x, gate, branch, shift, scale, EPS)
    fused_grads = ops.residual_norm_modulate_backward(dy2, dy, out, mean2, rstd2, scale, gate, branch)
    return (y, mean, rstd, *ln_grads, gated, *gated_grads, out, y2, mean2, rstd2, *fused_grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["chunk", "broadcast", "transposed"])
@pytest.mark.parametrize("shape", [(2, 64, 384), (3, 5, 17), (1, 1, 1)], ids=str)
def test_per_sample_views_match_contiguous(shape, layout, dtype):
    b, n, c = shape
    g = torch.Generator().manual_seed(0)
    x, branch, dy, dy2 = (torch.randn(b, n, c, generator=g, dtype=dtype) for _ in range(4))
    views, copies = _views(b, c, dtype, layout, g)
    assert layout == "transposed" or views[0].stride(1) == 1 and not views[0].is_contiguous() or b == 1
    ops = torch.ops.ebsparse
    got = _run_all(ops, x, branch, dy, dy2, views)
    expected = _run_all(ops, x, branch, dy, dy2, copies)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert torch.equal(a, e), f"output {i} differs with {layout} per-sample views"
