"""group_norm_silu on every backend against the pure-PyTorch reference (silu(group_norm(x))):
random shapes (odd sizes, one group, one channel per group, no spatial dims, empty batch), with and
without affine parameters, float32 and float64, gradcheck in float64, opcheck, bad arguments, and
`norm_silu`'s fused path in the U-Net (the fused backend runs and gives the unfused gradients)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsparse.ops import group_norm_silu, group_norm_silu_reference
from tests.ops.helpers import backend_params, outputs_with_capability, runs_on

CPU = torch.device("cpu")
PHASES = ("forward", "backward")


def _case(n, groups, per_group, spatial, affine, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c = groups * per_group
    x = (3 * torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) + 1).to(dtype)
    w = torch.randn(c, generator=g, dtype=torch.float64).to(dtype) if affine else None
    b = torch.randn(c, generator=g, dtype=torch.float64).to(dtype) if affine else None
    return x, w, b


def _grads(fn, x, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params("group_norm_silu", CPU, torch.float32))
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 3), groups=st.integers(1, 4), per_group=st.integers(1, 5),
       spatial=st.sampled_from([(), (1,), (5,), (3, 7), (8, 8), (2, 3, 4)]), affine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matches_reference(backend, dtype, n, groups, per_group, spatial, affine, seed):
    x, w, b = _case(n, groups, per_group, spatial, affine, dtype, seed)
    if x.shape[2:].numel() * per_group < 4:
        # Groups of one or two values are degenerate (variance 0, or every value normalised to +-1,
        # whose gradient is a difference of large, nearly equal terms): float32 cannot match float64
        # there to a fixed tolerance. Four values per group at least.
        spatial = (4,)
        x, w, b = _case(n, groups, per_group, spatial, affine, dtype, seed)
    dy = torch.randn_like(x)
    expected = _grads(lambda *a: group_norm_silu_reference(a[0], groups, a[1], a[2], 1e-5),
                      *(t.double() if t is not None else None for t in (x, w, b)), dy.double())
    with runs_on(backend, "group_norm_silu", PHASES if n else ("forward",)):
        got = _grads(lambda *a: group_norm_silu(a[0], groups, a[1], a[2], 1e-5, backend=backend), x, w, b, dy)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    for name, e, g in zip(("output", "grad_input", "grad_weight", "grad_bias"), expected, got):
        assert (e is None) == (g is None), name
        if e is not None:
            torch.testing.assert_close(g, e.to(dtype), **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", backend_params("group_norm_silu", CPU, torch.float64))
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_float64(backend, affine):
    x, w, b = _case(2, 2, 3, (3, 4), affine, torch.float64, 0)
    args = [t.requires_grad_() for t in (x, w, b) if t is not None]
    with runs_on(backend, "group_norm_silu", PHASES):
        if affine:
            assert torch.autograd.gradcheck(lambda x, w, b: group_norm_silu(x, 2, w, b, 1e-5, backend=backend), args)
        else:
            assert torch.autograd.gradcheck(lambda x: group_norm_silu(x, 2, None, None, 1e-5, backend=backend), args)


@pytest.mark.parametrize("backend", backend_params("group_norm_silu", CPU, torch.float32))
def test_opcheck(backend):
    from ebsparse.ops.group_norm_silu import _group_norm_silu_op

    x, w, b = _case(2, 4, 2, (5, 5), True, torch.float32, 1)
    args = (x.requires_grad_(), 4, w.requires_grad_(), b.requires_grad_(), 1e-6, backend)
    torch.library.opcheck(_group_norm_silu_op, args)


def test_compiled_matches_eager():
    x, w, b = _case(2, 4, 2, (6, 6), True, torch.float32, 2)
    fn = torch.compile(lambda x, w, b: group_norm_silu(x, 4, w, b, 1e-6, backend="native"), fullgraph=True)
    torch.testing.assert_close(fn(x, w, b), group_norm_silu_reference(x, 4, w, b, 1e-6), atol=1e-5, rtol=1e-5)


def test_nan_and_inf_propagate_as_in_the_reference():
    x, w, b = _case(1, 2, 2, (4,), True, torch.float32, 3)
    x[0, 0, 1] = float("nan")
    got = group_norm_silu(x, 2, w, b, backend="native")
    expected = group_norm_silu_reference(x, 2, w, b, 1e-5)
    assert torch.equal(got.isnan(), expected.isnan())


def test_native_float32_matches_the_reference_in_the_sigmoid_tails():
    """A scale of 100 puts the normalised values far past the native sigmoid's clamp (z in about
    [-250, 250], beyond the [-60, 87] it evaluates): values and gradients still match the reference."""
    x, _, b = _case(2, 2, 3, (5, 5), True, torch.float32, 7)
    w = torch.full((6,), 100.0)
    dy = torch.randn_like(x)
    expected = _grads(lambda *a: group_norm_silu_reference(a[0], 2, a[1], a[2], 1e-5),
                      x.double(), w.double(), b.double(), dy.double())
    with runs_on("native", "group_norm_silu", PHASES):
        got = _grads(lambda *a: group_norm_silu(a[0], 2, a[1], a[2], 1e-5, backend="native"), x, w, b, dy)
    z = F.group_norm(x, 2, w, b, 1e-5)
    assert z.amin() < -60 and z.amax() > 87  # the case reaches both clamped tails
    for name, e, g in zip(("output", "grad_input", "grad_weight", "grad_bias"), expected, got):
        torch.testing.assert_close(g, e.float(), atol=1e-3, rtol=1e-4, msg=lambda m: f"{name}: {m}")


_FUSED_CODE = """
x, w, b, dy = inputs["x"], inputs["w"], inputs["b"], inputs["dy"]
y, mean, rstd = torch.ops.ebsparse.fused_group_norm_silu(x, 3, w, b, 1e-5)
dx, dw, db = torch.ops.ebsparse.fused_group_norm_silu_backward(dy, x, mean, rstd, 3, w, b)
outputs.update(y=y, dx=dx, dw=dw, db=db)
"""


@pytest.mark.parametrize("capability", ["avx2", "avx512"])
@pytest.mark.parametrize("spatial", [(7, 9), (16, 16), (5,)], ids=str)
def test_native_float32_instruction_sets_match_the_reference(tmp_path, capability, spatial):
    """The float32 kernels of each instruction set (EBSPARSE_CPU_CAPABILITY, one per process) against
    the float64 reference, on groups whose lengths (3 x 63, 3 x 256, 3 x 5 values) leave tails after
    the 64- and 16-value loops of the AVX-512 spans."""
    if capability == "avx512" and torch.ops.ebsparse.cpu_capability() != "avx512":
        pytest.skip("this CPU has no AVX-512")
    x, w, b = _case(2, 3, 3, spatial, True, torch.float32, 11)
    dy = torch.randn_like(x)
    got = outputs_with_capability(_FUSED_CODE, dict(x=x, w=w, b=b, dy=dy), tmp_path, capability)
    expected = _grads(lambda *a: group_norm_silu_reference(a[0], 3, a[1], a[2], 1e-5),
                      x.double(), w.double(), b.double(), dy.double())
    for name, e in zip(("y", "dx", "dw", "db"), expected):
        torch.testing.assert_close(got[name], e.float(), atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_groups=3), ValueError, "num_groups: expected a positive divisor of the 4 channels"),
    (dict(num_groups=0), ValueError, "num_groups"),
    (dict(weight=torch.ones(3)), ValueError, r"weight: expected shape \(4,\)"),
    (dict(bias=torch.ones(4, dtype=torch.float64)), TypeError, "bias: expected dtype"),
    (dict(eps=0.0), ValueError, "eps: expected a positive number"),
    (dict(input=torch.ones(4)), ValueError, r"input: expected \(N, C, \.\.\.\)"),
    (dict(input=torch.ones(2, 4, 3, dtype=torch.long)), TypeError, "input: expected a floating-point tensor"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    args = dict(input=torch.ones(2, 4, 3), num_groups=2, weight=None, bias=None, eps=1e-5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        group_norm_silu(args["input"], args["num_groups"], args["weight"], args["bias"], args["eps"])


def test_native_kernel_names_bad_arguments():
    with pytest.raises(RuntimeError, match="num_groups: expected a positive divisor"):
        torch.ops.ebsparse.fused_group_norm_silu(torch.ones(2, 4, 3), 3, None, None, 1e-5)


def test_unet_runs_the_fused_op_and_matches_the_unfused_model(monkeypatch):
    """The U-Net's norm + SiLU pairs run the fused op (native backend forced) and give the gradients
    of the unfused pair (a forward hook on every norm makes `norm_silu` call the module itself)."""
    from ebsparse.models import DDPMUNet, DDPMUNetConfig
    from ebsparse.nn import norm as norm_module

    torch.manual_seed(0)
    model = DDPMUNet(DDPMUNetConfig(ch=16, ch_mult=(1, 2), num_groups=4, attn_resolutions=(8,), dropout=0.0,
                                    resolution=16, num_res_blocks=1))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])

    def grads():
        model.zero_grad()
        model(x, t).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(norm_module, "BACKEND", "native")
    with runs_on("native", "group_norm_silu", PHASES):
        fused = grads()
    hooks = [m.register_forward_hook(lambda *a: None) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    try:
        unfused = grads()
    finally:
        for h in hooks:
            h.remove()
    for f, u in zip(fused, unfused):
        torch.testing.assert_close(f, u, atol=1e-4, rtol=1e-3)
