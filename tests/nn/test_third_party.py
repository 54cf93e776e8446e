"""sparsify on models nobody here wrote: diffusers' U-Net and DiT, built offline from configs."""

import pytest
import torch

import ebsparse
from ebsparse import SparseConv2d, SparseLinear
from tests.ops.helpers import backend_params, runs_on

diffusers = pytest.importorskip("diffusers")


def _tiny_unet():
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


@pytest.mark.parametrize("backend", backend_params("conv2d", torch.device("cpu"), torch.float64))
@pytest.mark.parametrize("pattern,density", [("unstructured", 0.3), ("2:4", None)])
def test_diffusers_unet_sparsified_matches_masked_dense(pattern, density, backend):
    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("a whole U-Net is too slow for the Triton interpreter; tests/ops cover its kernels")
    torch.manual_seed(0)
    model = _tiny_unet().double()
    report = ebsparse.sparsify(model, density=density, pattern=pattern, backend=backend)
    assert len(report.converted) > 10
    assert any(isinstance(m, SparseConv2d) for m in model.modules())
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    x, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([3, 700])
    with runs_on(backend, "conv2d", ("forward", "backward")), runs_on(backend, "linear", ("forward", "backward")):
        out = model(x, t).sample
        out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    kept = {n + ".weight": m.mask.clone() for n, m in model.named_modules()
            if isinstance(m, (SparseLinear, SparseConv2d))}
    model.zero_grad()
    ebsparse.densify(model)  # same masked weights, dense modules
    ref = model(x, t).sample
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for name, p in model.named_parameters():
        if name in grads:
            # dense modules give gradients off the pattern too: compare at the kept positions (a
            # kernel that zeroed a kept weight's gradient would fail here), and zero elsewhere
            keep = kept.get(name, torch.ones_like(p, dtype=torch.bool))
            torch.testing.assert_close(grads[name][keep], p.grad[keep], msg=name)
            assert not grads[name][~keep].any(), name


def test_diffusers_dit_sparsified_runs():
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                            out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                            num_embeds_ada_norm=10)
    report = ebsparse.sparsify(model, density=0.25)
    assert len(report.converted) >= 10
    out = model(torch.randn(2, 4, 8, 8), timestep=torch.tensor([1, 500]), class_labels=torch.tensor([0, 3])).sample
    assert out.shape == (2, 8, 8, 8)
    out.sum().backward()
    for module in model.modules():
        if isinstance(module, SparseLinear):
            assert not module.weight.grad[~module.mask].any()
