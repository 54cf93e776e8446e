"""`thin_conv2d`: a model's dense conv with few channels on one side on the native conv engine (full
pattern), against ``nn.Conv2d`` itself: outputs and every gradient on random thin shapes (1-8
channels on one side, strides, paddings, kernels, odd sizes, with and without bias, with and without
an input gradient); the native backend must have run. Falls back to the module (hooks fire) when
observed, wide, float64 or under autocast; `auto`'s choice is recorded for checkpoints; the models
whose first and last convs are thin run them natively and keep their gradients."""

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ebsparse.backends import select, trace
from ebsparse.backends.extension import extension_error
from ebsparse.nn import thin_conv
from ebsparse.nn.thin_conv import MAX_THIN_CHANNELS, is_thin, thin_conv2d
from tests.ops.helpers import runs_on

pytestmark = pytest.mark.skipif(extension_error() is not None, reason="ebsparse._C not built")

PHASES = ("forward", "backward")


def _grads(fn, conv, x, dy):
    """Output and the gradients of x (when it wants one), weight and bias."""
    conv.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    y = fn(conv, x)
    y.backward(dy)
    grads = [x.grad] if x.requires_grad else []
    return [y.detach()] + grads + [p.grad for p in conv.parameters()]


@contextlib.contextmanager
def _backend(name):
    saved = thin_conv.BACKEND
    thin_conv.BACKEND = name
    try:
        yield
    finally:
        thin_conv.BACKEND = saved


@contextlib.contextmanager
def _no_kernel_calls():
    with trace() as calls:
        yield
    assert not calls, f"an ebsparse kernel ran: {calls}"


@settings(max_examples=40, deadline=None)
@given(thin=st.integers(1, MAX_THIN_CHANNELS), wide=st.integers(1, 40), thin_side=st.sampled_from(["in", "out"]),
       n=st.integers(1, 3), h=st.integers(1, 13), w=st.integers(1, 13), k=st.integers(1, 3), stride=st.integers(1, 2),
       padding=st.integers(0, 1), bias=st.booleans(), input_grad=st.booleans(), seed=st.integers(0, 2**16))
def test_native_matches_the_module(thin, wide, thin_side, n, h, w, k, stride, padding, bias, input_grad,
                                   seed):
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    ci, co = (thin, wide) if thin_side == "in" else (wide, thin)
    torch.manual_seed(seed)
    conv = nn.Conv2d(ci, co, k, stride, padding, bias=bias)
    x = torch.randn(n, ci, h, w).requires_grad_(input_grad)
    dy = torch.randn_like(conv(x))
    expected = _grads(lambda m, t: m(t), conv, x, dy)
    with _backend("native"), runs_on("native", "conv2d", PHASES):
        got = _grads(thin_conv2d, conv, x, dy)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4 * max(1.0, e.abs().max().item()), rtol=1e-4)


def test_without_grad_runs_the_forward_only(monkeypatch):
    monkeypatch.setattr(thin_conv, "BACKEND", "native")
    conv, x = nn.Conv2d(24, 3, 3, padding=1), torch.randn(2, 24, 9, 9)
    with torch.no_grad(), runs_on("native", "conv2d", ("forward",)):
        got = thin_conv2d(conv, x)
    torch.testing.assert_close(got, conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["hooked", "wide", "float64", "autocast", "subclass", "groups"])
def test_falls_back_to_the_module(monkeypatch, case):
    """The module itself runs (its hooks fire, ATen's conv node is recorded) whenever the native
    path does not apply."""
    monkeypatch.setattr(thin_conv, "BACKEND", "native")
    conv, x = nn.Conv2d(4, 16, 3, padding=1), torch.randn(2, 4, 8, 8)
    calls = []
    if case == "hooked":
        conv.register_forward_hook(lambda *a: calls.append(1))
    elif case == "wide":
        conv, x = nn.Conv2d(16, 16, 3, padding=1), torch.randn(2, 16, 8, 8)
    elif case == "float64":
        conv, x = conv.double(), x.double()
    elif case == "subclass":
        conv = type("MyConv", (nn.Conv2d,), {})(4, 16, 3, padding=1)
    elif case == "groups":
        conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    with _no_kernel_calls():
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = thin_conv2d(conv, x)
        else:
            y = thin_conv2d(conv, x)
    assert y.grad_fn is not None and "Convolution" in type(y.grad_fn).__name__
    assert calls == ([1] if case == "hooked" else [])


def test_is_thin():
    assert is_thin(nn.Conv2d(3, 128, 3)) and is_thin(nn.Conv2d(128, MAX_THIN_CHANNELS, 1))
    assert not is_thin(nn.Conv2d(MAX_THIN_CHANNELS + 1, 128, 3))
    assert not is_thin(nn.Conv2d(3, 8, 3, padding="same"))
    assert not is_thin(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"))
    assert not is_thin(nn.Linear(3, 8))


def test_auto_choice_is_recorded_for_checkpoints(monkeypatch):
    """Under auto the choice is measured once per shape and kept in the choices a trainer saves, so a
    resumed run takes it instead of measuring again; the result equals the module's either way."""
    monkeypatch.setattr(thin_conv, "BACKEND", "auto")
    monkeypatch.setattr(thin_conv, "_resolved", {})
    conv, x = nn.Conv2d(5, 3, 3, padding=1), torch.randn(2, 5, 11, 7, requires_grad=True)
    before = set(select.recorded())
    y = thin_conv2d(conv, x)
    new = [k for k in select.recorded() if k not in before]
    assert len(new) == 1 and "thin" in new[0] and select.recorded()[new[0]] in ("native", "dense")
    torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-5)
    thin_conv2d(conv, x)
    assert [k for k in select.recorded() if k not in before] == new  # measured once


@pytest.mark.parametrize("model_name", ["ddpm", "ldm", "dit"])
def test_models_run_their_thin_convs_natively(monkeypatch, model_name):
    """The first and last convs of the U-Nets (the patch embedding of DiT) run on the native engine
    and the model's gradients equal those with the modules called (a forward hook on every conv)."""
    from ebsparse.models import DDPMUNet, DDPMUNetConfig, DiT, DiTConfig, LDMUNet, LDMUNetConfig

    monkeypatch.setattr(thin_conv, "BACKEND", "native")
    torch.manual_seed(0)
    if model_name == "ddpm":
        model = DDPMUNet(DDPMUNetConfig(ch=16, ch_mult=(1, 2), num_groups=4, attn_resolutions=(8,), dropout=0.0,
                                        resolution=16, num_res_blocks=1))
        args = (torch.randn(2, 3, 16, 16), torch.tensor([3, 500]))
    elif model_name == "ldm":
        model = LDMUNet(LDMUNetConfig(image_size=8, in_channels=4, out_channels=4, model_channels=16,
                                      channel_mult=(1, 2), attention_resolutions=(2,), num_res_blocks=1,
                                      num_heads=2, num_head_channels=-1, num_groups=4))
        args = (torch.randn(2, 4, 8, 8), torch.tensor([3, 500]))
    else:
        model = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
                              num_classes=3, learn_sigma=False))
        args = (torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([0, 2]))

    def grads():
        model.zero_grad()
        model(*args).square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    with runs_on("native", "conv2d", PHASES):
        native = grads()
    hooks = [m.register_forward_hook(lambda *a: None) for m in model.modules() if type(m) is nn.Conv2d]
    try:
        modules = grads()
    finally:
        for h in hooks:
            h.remove()
    assert len(native) == len(modules)
    for a, b in zip(native, modules):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
