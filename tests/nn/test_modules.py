"""SparseLinear / SparseConv2d / sparsify: drop-in behaviour, state dicts, conversion."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ebsparse
from ebsparse import backends
from ebsparse import SparseConv2d, SparseLinear, densify, sparsify
from tests.ops.helpers import backend_params, runs_on

CPU = torch.device("cpu")


def test_linear_exact_density_and_masked_weight():
    layer = SparseLinear(40, 30, density=0.1)
    assert int(layer.mask.sum()) == round(0.1 * 1200)
    assert not layer.weight[~layer.mask].any()


def test_from_dense_and_back():
    dense = nn.Linear(16, 8)
    sparse = SparseLinear.from_dense(dense, density=0.5)
    x = torch.randn(4, 16)
    torch.testing.assert_close(sparse(x), sparse.to_dense()(x))
    conv = nn.Conv2d(8, 4, 3, padding=1, stride=2)
    sconv = SparseConv2d.from_dense(conv, pattern="2:4")
    xc = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(sconv(xc), sconv.to_dense()(xc), atol=1e-5, rtol=1e-5)


def test_density_one_trains_like_dense():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 25, 5)).double()
    sparse = copy.deepcopy(dense)
    sparsify(sparse, density=1.0)
    opt_d = torch.optim.Adam(dense.parameters(), lr=1e-2)
    opt_s = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    for step in range(5):
        x, y = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randint(0, 5, (4,))
        for model, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (n, p), (_, q) in zip(dense.named_parameters(), sparse.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_pruned_weights_stay_zero_under_training():
    layer = SparseLinear(32, 16, density=0.25)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 32)).pow(2).sum().backward()
        opt.step()
    assert not layer.weight[~layer.mask].any()


def test_state_dict_round_trip_and_plain_linear_state():
    layer = SparseLinear(12, 6, density=0.3)
    clone = SparseLinear(12, 6, density=1.0)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone.mask, layer.mask)
    x = torch.randn(3, 12)
    torch.testing.assert_close(clone(x), layer(x))
    plain = nn.Linear(12, 6)
    clone.load_state_dict(plain.state_dict())  # no mask key: keeps its mask
    assert torch.equal(clone.mask, layer.mask)


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float32))
def test_set_mask_rebuilds_index(backend):
    layer = SparseLinear(10, 4, density=1.0, backend=backend)
    x = torch.randn(2, 10)
    full = layer(x)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 0] = True
    layer.set_mask(mask)
    with runs_on(backend, "linear"):
        out = layer(x)
    torch.testing.assert_close(out, x[:, :1] * layer.weight[:, 0] + layer.bias)
    assert not torch.allclose(full, out)


def test_sparsify_skips_and_reports():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8, 6),
                          nn.Linear(6, 3))
    report = sparsify(model, density=0.5, pattern="2:4")
    assert report.converted == ["0", "3"]
    assert "groups=2" in report.skipped["1"] and "in_features % 4" in report.skipped["4"]
    assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseLinear)
    with pytest.raises(ValueError, match="cannot be made sparse"):
        sparsify(nn.Sequential(nn.Linear(6, 3)), pattern="2:4", strict=True)


def test_sparsify_density_mapping_and_globs():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    report = sparsify(model, density={"0": 0.25, "2": 0.5}, exclude="2")
    assert report.converted == ["0"]
    assert isinstance(model[0], SparseLinear) and type(model[2]) is nn.Linear
    assert densify(model) == ["0"] and type(model[0]) is nn.Linear


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="density: expected a value in"):
        SparseLinear(4, 4, density=1.5)
    with pytest.raises(ValueError, match="pattern: expected one of"):
        SparseLinear(4, 4, pattern="3:4")
    with pytest.raises(ValueError, match="groups=2"):
        SparseConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="in_features % 4 == 0"):
        SparseLinear(6, 4, pattern="2:4")
    layer = SparseLinear(4, 4)
    with pytest.raises(ValueError, match=r"mask: expected shape \(4, 4\)"):
        layer.set_mask(torch.ones(3, 4, dtype=torch.bool))


def test_report_mentions_every_backend():
    text = ebsparse.backends.report(print_it=False)
    for name in ("dense", "native", "triton"):
        assert name in text


@pytest.mark.parametrize("make", [
    lambda: SparseLinear(12, 7, density=0.4),
    lambda: SparseConv2d(4, 6, 3, padding=1, density=0.4),
], ids=["linear", "conv"])
@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_every_path_masks_forward_and_weight_grad(make, backend):
    """Every backend agrees with the masked reference, even when something wrote non-zeros (and
    non-finite values) outside the mask, and after the mask changes (cached pattern)."""
    torch.manual_seed(0)
    m = make().double()
    m.backend = backend
    op = "linear" if isinstance(m, torch.nn.Linear) else "conv2d"
    x = torch.randn(3, 12, dtype=torch.float64) if op == "linear" else torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for step in range(2):
        with torch.no_grad():
            m.weight.copy_(torch.randn_like(m.weight))  # non-zeros outside the mask must not leak
            m.weight[~m.mask] = float("nan") if step else float("inf")  # nor non-finite values
        m.zero_grad()
        with runs_on(backend, op, ("forward", "backward")):
            y = m(x)
            y.square().sum().backward()
        w = torch.where(m.mask, m.weight, 0.0).detach().requires_grad_()
        ref = torch.nn.functional.linear(x, w, m.bias) if op == "linear" else \
            torch.nn.functional.conv2d(x, w, m.bias, padding=1)
        ref.square().sum().backward()
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(m.weight.grad, w.grad * m.mask)
        m.set_mask(torch.rand(m.weight.shape) < 0.6)  # the second round runs on a new mask


@pytest.mark.parametrize("backend", backend_params("linear", CPU, torch.float64))
def test_module_second_order_gradient_raises(backend):
    """Every backend, the dense one included, is differentiable once through a layer (a conv on
    the dense backend runs plain F.conv2d instead: test_plain_dense_conv_*)."""
    layer = SparseLinear(8, 4, density=0.5, backend=backend).double()
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable once only"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)


def test_plain_dense_conv_skips_the_op_and_masks():
    """A conv on the dense backend runs plain F.conv2d on the bitwise-masked weight (not the op's
    autograd.Function: per-call overhead that a layer too small to gain pays on every step),
    traced as the dense backend; its output and weight gradient are masked (an inf outside the
    mask does not leak), it is differentiable twice, and a RigL update step (dense weight
    gradient) goes through the op and gets the full gradient."""
    torch.manual_seed(0)
    m = SparseConv2d(4, 6, 3, stride=2, padding=1, density=0.4, backend="dense").double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        m.weight[~m.mask] = float("inf")
    w = torch.where(m.mask, m.weight, 0.0).detach().requires_grad_()
    ref = F.conv2d(x, w, m.bias, stride=2, padding=1)
    ref.square().sum().backward()
    for dense_grad in (False, True):
        m.zero_grad()
        m.dense_weight_grad = dense_grad
        with backends.trace() as calls:
            y = m(x)
            y.square().sum().backward()
        assert calls == [("conv2d", "forward", "dense"), ("conv2d", "backward", "dense")]
        assert ("_Eager" in type(y.grad_fn).__name__) == dense_grad
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(m.weight.grad, w.grad if dense_grad else w.grad * m.mask)
    m.dense_weight_grad = False
    with torch.no_grad():
        m.weight[~m.mask] = 0.0
    torch.autograd.gradgradcheck(lambda x: m(x).square(), (x.requires_grad_(),))


def test_load_state_dict_checks_the_pattern_as_set_mask_does():
    """A 2:4 layer refuses a mask that is not 2:4 whichever way it comes in."""
    layer = SparseLinear(8, 4, pattern="2:4")
    before = layer.mask.clone()
    state = layer.state_dict()
    state["mask"] = torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="not a 2:4 pattern"):
        layer.set_mask(state["mask"])
    with pytest.raises(RuntimeError, match="mask: not a 2:4 pattern"):
        layer.load_state_dict(state)
    assert torch.equal(layer.mask, before) and layer.density == 0.5
    state["mask"] = torch.ones(4, 8)
    with pytest.raises(RuntimeError, match="mask: expected a bool tensor"):
        layer.load_state_dict(state)


def test_sparsify_2_4_density_is_half_or_none():
    sparsify(nn.Sequential(nn.Linear(8, 4)), pattern="2:4", density=0.5)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="density: a 2:4 pattern has density 0.5"):
        sparsify(model, pattern="2:4", density={"0": 0.5, "1": 0.3})
    assert type(model[0]) is nn.Linear  # nothing swapped by a call that raises


def test_copies_and_pickles_share_the_registered_backends():
    """EMA copies and torch.save of whole models keep working after a forward (cached pattern,
    resolved backend), and a copy still runs the backend the original resolved."""
    import pickle

    layer = SparseLinear(8, 4, density=0.5, backend="dense")
    x = torch.randn(2, 8)
    layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert list(clone._resolved.values()) == list(layer._resolved.values())
        with runs_on("dense", "linear"):
            torch.testing.assert_close(clone(x), layer(x))


def test_masked_weight_gradient_masked_first_order_and_differentiable_twice():
    """`masked_weight` (the plain dense path's weight): an ordinary backward masks the gradient
    directly (no graph behind it), and under create_graph its backward is differentiable again."""
    from ebsparse.nn.pattern import masked_weight

    g = torch.Generator().manual_seed(3)
    m = SparseConv2d(3, 5, 3, density=0.5, backend="dense").double()
    w = torch.randn(m.weight.shape, dtype=torch.float64, generator=g, requires_grad=True)
    upstream = torch.randn(m.weight.shape, dtype=torch.float64, generator=g)
    upstream[0, 0, 0, 0] = float("nan")  # dropped wherever the mask drops it
    m.mask[0, 0, 0, 0] = False
    (grad,) = torch.autograd.grad(masked_weight(w, m.mask, m.pattern_index()), w, upstream)
    assert grad.grad_fn is None
    assert torch.equal(grad, torch.where(m.mask, upstream, 0.0))
    torch.autograd.gradgradcheck(lambda t: masked_weight(t, m.mask, m.pattern_index()).square(), (w,))
