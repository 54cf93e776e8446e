"""ebsparse.nn.upsample.upsample_nearest_2x against F.interpolate(scale_factor=2, nearest): hypothesis
over shapes (one pixel, odd sizes) and dtypes, values and gradients bitwise; gradcheck and
gradgradcheck in fp64; non-contiguous input; the DDPM U-Net's Upsample runs it; bad input raises."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.models.ddpm_unet import Upsample
from ebsparse.nn.upsample import upsample_nearest_2x


def _reference(x):
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 11), st.integers(1, 11)),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_equals_interpolate_bitwise(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g).to(dtype)
    grad = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=g).to(dtype)
    x, ref_x = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    out, ref = upsample_nearest_2x(x), _reference(ref_x)
    assert type(out.grad_fn).__name__ == "_UpsampleNearest2xBackward"
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(out, ref) and out.is_contiguous()
    assert torch.equal(x.grad, ref_x.grad)


def test_gradcheck_twice_and_non_contiguous_input():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(upsample_nearest_2x, (x,))
    torch.autograd.gradgradcheck(upsample_nearest_2x, (x,))
    t = torch.randn(2, 5, 4, 3).transpose(1, 3)  # not contiguous: F.interpolate's layout rules apply
    assert torch.equal(upsample_nearest_2x(t), _reference(t))


def test_unet_upsample_runs_it():
    m = Upsample(4, with_conv=False)
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    y = m(x)
    assert type(y.grad_fn).__name__ == "_UpsampleNearest2xBackward"
    assert torch.equal(y, _reference(x))


def test_empty_input_behaves_as_interpolate():
    for shape in [(0, 3, 2, 2), (2, 0, 2, 2)]:
        x = torch.zeros(shape)
        try:
            ref = _reference(x)
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=str(e).split(" but")[0]):
                upsample_nearest_2x(x)
        else:
            assert torch.equal(upsample_nearest_2x(x), ref)


def test_bad_input_names_x():
    with pytest.raises(ValueError, match="x: expected a"):
        upsample_nearest_2x(torch.randn(2, 3, 4))
