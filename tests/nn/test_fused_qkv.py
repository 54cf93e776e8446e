"""The DDPM U-Net's AttnBlock runs its sparse q, k, v 1x1 convolutions as ONE sparse kernel call
(ebsparse.nn.fused): equal to the three calls, one call counted per phase, each layer keeping its own
mask, count, names and RigL dense gradient; s2s RigL on a U-Net with attention keeps exact counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebsparse.backends import trace
from ebsparse.models.ddpm_unet import AttnBlock, DDPMUNet
from ebsparse.nn import SparseConv2d, sparsify
from ebsparse.nn.fused import StackedConv2d, stack_unsupported_reason
from ebsparse.s2s import RigL
from tests.ops.helpers import backend_params

CPU = torch.device("cpu")
QKV = ["q", "k", "v"]


def _block(channels=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return AttnBlock(channels, 4).to(dtype)


def _run(block, x, fuse):
    block.fuse_qkv = fuse
    block.zero_grad(set_to_none=True)
    with trace() as calls:
        out = block(x)
        out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    return out.detach(), grads, [c for c in calls if c[0] in ("conv2d", "block_conv2d")]


def _assert_same(a, b, dtype):
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params("conv2d", CPU, torch.float64))
def test_fused_equals_three_calls_and_is_one_call(backend, dtype):
    block = _block(dtype=dtype)
    # ERK-like: the three layers keep different densities, each its own exact count
    densities = {"q": 0.3, "k": 0.5, "v": 0.7}
    sparsify(block, density=densities, backend=backend)
    counts = {n: int(getattr(block, n).mask.sum()) for n in QKV}
    x = torch.randn(2, 16, 5, 3, dtype=dtype)  # 15 pixels
    fused, three = _run(block, x, True), _run(block, x, False)
    _assert_same(fused, three, dtype)
    # Resolved to dense, 1x1 layers run as one product of the stacked masked weights (ebsparse.nn.fused)
    stacked_calls = 1
    for phase in ("forward", "backward"):
        assert fused[2].count(("conv2d", phase, backend)) == stacked_calls, fused[2]
        assert three[2].count(("conv2d", phase, backend)) == 3, three[2]
    for n in QKV:  # each layer's own mask, count and gradient at its kept positions only
        conv = getattr(block, n)
        assert int(conv.mask.sum()) == counts[n] == round(densities[n] * 256)
        assert (fused[1][f"{n}.weight"][~conv.mask] == 0).all()
    assert set(block.state_dict()) == {f"{n}.{p}" for n in ("norm", "q", "k", "v", "proj_out")
                                       for p in ("weight", "bias")} | {f"{n}.mask" for n in QKV}


@pytest.mark.parametrize("pattern,block_shape", [("2:4", None), ("block", (8, 8))])
def test_fused_other_patterns(pattern, block_shape):
    block = _block()
    sparsify(block, density=None if pattern == "2:4" else 0.5, pattern=pattern, block=block_shape,
             include=QKV, backend="native")
    x = torch.randn(2, 16, 4, 4)
    fused, three = _run(block, x, True), _run(block, x, False)
    _assert_same(fused, three, torch.float32)
    op = "block_conv2d" if pattern == "block" else "conv2d"
    assert [c for c in fused[2] if c[0] == op and c[1] == "forward"] == [(op, "forward", "native")]


def test_mask_change_and_dense_weight_grad_are_seen():
    """A mask changed between steps (as RigL does) is in the next fused call; the dense weight
    gradient (RigL's update step, asked of every layer) reaches each layer off its mask; asked of one
    layer only, the three run one by one so the others keep masked gradients."""
    block = _block(seed=1)
    sparsify(block, density=0.4, include=QKV, backend="native")
    x = torch.randn(1, 16, 4, 4)
    _run(block, x, True)  # builds the stacked index
    new = torch.rand(16, 16, 1, 1) < 0.6
    block.k.set_mask(new)
    for n in QKV:
        getattr(block, n).dense_weight_grad = True
    fused, three = _run(block, x, True), _run(block, x, False)
    _assert_same(fused, three, torch.float32)
    assert len([c for c in fused[2] if c[1] == "forward"]) == 1
    for n in QKV:  # the full gradient, not masked
        assert (fused[1][f"{n}.weight"][~getattr(block, n).mask] != 0).any()
    block.q.dense_weight_grad = block.v.dense_weight_grad = False
    fused, three = _run(block, x, True), _run(block, x, False)
    _assert_same(fused, three, torch.float32)
    assert len([c for c in fused[2] if c[1] == "forward"]) == 3
    assert (fused[1]["k.weight"][~new] != 0).any() and (fused[1]["q.weight"][~block.q.mask] == 0).all()


def test_unstackable_layers_run_one_by_one():
    block = _block()
    sparsify(block, density=0.5, include=["q", "k"], backend="native")  # v stays dense
    assert stack_unsupported_reason([block.q, block.k, block.v]) == "not all SparseConv2d"
    x = torch.randn(1, 16, 4, 4)
    fused, three = _run(block, x, True), _run(block, x, False)
    _assert_same(fused, three, torch.float32)
    assert len([c for c in fused[2] if c[1] == "forward"]) == 2  # q and k, one call each
    other = _block()
    sparsify(other, density=0.5, include=QKV, backend="native")
    other.k.backend = "dense"
    assert stack_unsupported_reason([other.q, other.k, other.v]) == "their backend differ"
    with pytest.raises(ValueError, match="convs: cannot run as one call: their backend differ"):
        StackedConv2d()([other.q, other.k, other.v], x)


def test_rigl_on_unet_with_attention_keeps_exact_counts_and_fuses():
    torch.manual_seed(0)
    model = DDPMUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8, num_groups=4,
                     dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = RigL(sparsity=0.8, update_every=2, prune_fraction=0.3)
    sp.apply(model, opt)
    attn = model.mid.attn_1
    assert all(isinstance(getattr(attn, n), SparseConv2d) for n in QKV)
    before = {t.name: int(t.mask.sum()) for t in sp.targets}
    masks0 = {n: getattr(attn, n).mask.clone() for n in QKV}
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        x = torch.randn(2, 3, 8, 8, generator=g)
        opt.zero_grad(set_to_none=True)
        with trace() as calls:
            loss = nn.functional.mse_loss(model(x, torch.tensor([3, 70])), x)
            loss.backward()
        if sp.step():
            opt.step()
        assert torch.isfinite(loss)
    assert sp.updates == 3
    assert {t.name: int(t.mask.sum()) for t in sp.targets} == before
    assert any((getattr(attn, n).mask != masks0[n]).any() for n in QKV)  # RigL moved q/k/v masks
    for t in sp.targets:
        assert (t.weight[~t.mask] == 0).all()
    # every attention block (at 4x4 on the way down and up, and the middle one) fuses its q, k, v
    attention_blocks = [m for m in model.modules() if isinstance(m, AttnBlock)]
    assert all(stack_unsupported_reason([m.q, m.k, m.v]) is None for m in attention_blocks)
    convs = [c for c in calls if c[0] == "conv2d" and c[1] == "forward"]
    sparse_convs = sum(isinstance(m, SparseConv2d) for m in model.modules())
    assert len(convs) == sparse_convs - 2 * len(attention_blocks)
