"""Block-sparse rows beside the unstructured ones (issue 21): a layer's training step (forward +
both gradients, dense upstream gradient) with block masks at 75 / 90 / 95% sparsity for each block
shape, conv (bench/settings.CONV_SHAPES) and linear (LINEAR_SHAPES), on the native block kernels;
and the CIFAR-10 U-Net training step with ERK block masks (Static-DM's masks at granularity block,
every layer on the auto backend). Every row is timed alternately with the dense step on the same
inputs (bench/timing.py); the speed-up is dense / block.

Run: ``pytest bench/test_block_sparse.py --benchmark`` (2 threads: EBSPARSE_BENCH_THREADS=2).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import ebsparse
from bench import breakdown, settings
from bench.providers import training_step
from bench.settings import CONV_SHAPES, LINEAR_SHAPES
from bench.timing import paired
from ebsparse.formats.block import block_unsupported_reason, random_block_mask

BLOCKS = [(4, 4), (8, 8), (16, 16), (32, 32)]
SPARSITIES = [0.75, 0.9, 0.95]


def _mask(shape, sparsity, block):
    reason = block_unsupported_reason(shape, block)
    if reason:
        pytest.skip(reason)
    return random_block_mask(shape, 1.0 - sparsity, block, generator=torch.Generator().manual_seed(0))


def _block_id(block):
    return f"{block[0]}x{block[1]}"


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"sparsity-{s}")
@pytest.mark.parametrize("block", BLOCKS, ids=_block_id)
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_block_linear_step(benchmark, shape, block, sparsity):
    torch.manual_seed(0)
    x = torch.randn(shape.batch, shape.in_features, requires_grad=True)
    w = torch.randn(shape.out_features, shape.in_features)
    mask = _mask(w.shape, sparsity, block)
    grad = torch.randn(shape.batch, shape.out_features)
    layer = ebsparse.SparseLinear(shape.in_features, shape.out_features, bias=False, pattern="block", block=block,
                                  mask=mask, backend="native")
    wd = (w * mask).requires_grad_()
    sparse = training_step(lambda: layer(x), x, layer.weight, upstream=grad)
    dense = training_step(lambda: F.linear(x, wd), x, wd, upstream=grad)
    sparse()
    paired(benchmark, sparse, dense, group=f"linear {shape} step dense-grad sparsity-{sparsity}",
           provider=f"block-{_block_id(block)}-native", rounds=settings.rounds(settings.LAYER_ROUNDS),
           gflop=3 * 2 * int(mask.sum()) * shape.batch / 1e9)


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"sparsity-{s}")
@pytest.mark.parametrize("block", BLOCKS, ids=_block_id)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_block_conv_step(benchmark, shape, block, sparsity):
    torch.manual_seed(0)
    x = torch.randn(shape.batch, shape.in_channels, shape.size, shape.size, requires_grad=True)
    w = torch.randn(shape.out_channels, shape.in_channels, shape.kernel, shape.kernel)
    mask = _mask(w.shape, sparsity, block)
    out = shape.size + 2 * shape.padding - shape.kernel + 1
    grad = torch.randn(shape.batch, shape.out_channels, out, out)
    layer = ebsparse.SparseConv2d(shape.in_channels, shape.out_channels, shape.kernel, padding=shape.padding,
                                  bias=False, pattern="block", block=block, mask=mask, backend="native")
    wd = (w * mask).requires_grad_()
    sparse = training_step(lambda: layer(x), x, layer.weight, upstream=grad)
    dense = training_step(lambda: F.conv2d(x, wd, None, 1, shape.padding), x, wd, upstream=grad)
    sparse()
    paired(benchmark, sparse, dense, group=f"conv {shape} step dense-grad sparsity-{sparsity}",
           provider=f"block-{_block_id(block)}-native", rounds=settings.rounds(settings.LAYER_ROUNDS),
           gflop=3 * 2 * int(mask.sum()) * shape.batch * out * out / 1e9)


@functools.cache
def _unet(sparsity: float, block):
    """(model in train mode, its conv/linear weight FLOPs over dense's: FlopsReport.weight_ratio)."""
    from ebsparse.models import DDPMUNet, DDPMUNetConfig
    from ebsparse.s2s import Static, densities_of, flops_report

    config = DDPMUNetConfig(ch=settings.UNET_CHANNELS, num_groups=settings.UNET_NORM_GROUPS)
    torch.manual_seed(0)
    model = DDPMUNet(config).train()
    if sparsity == 0:
        return model, 1.0
    sp = Static(sparsity=sparsity, distribution="erk", granularity="block", block=block)
    sp.apply(model)
    with torch.device("meta"):
        meta_model = DDPMUNet(config)
    inputs = (torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    return model, flops_report(meta_model, inputs, densities_of(sp.masks())).weight_ratio


def _unet_step(model):
    g = torch.Generator().manual_seed(0)
    batch = settings.UNET_BATCH
    x, eps = torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        torch.mean((model(x, t) - eps) ** 2).backward()

    step()  # resolves the backends of every sparse layer
    return step


@pytest.mark.parametrize("block", [(16, 16), (32, 32)], ids=_block_id)
@pytest.mark.parametrize("sparsity", [0.9], ids=lambda s: f"sparsity-{s}")
def test_unet_cifar10_block_train_step(benchmark, sparsity, block):
    """The step paired with dense's; then one profiled step of each, split by category, and what
    issue 21's 5x asks of the block kernels (bench/breakdown.py), into unet_block_<block>_breakdown.md."""
    (model, fraction), (dense_model, _) = _unet(sparsity, block), _unet(0.0, None)
    sparse_step, dense_step = _unet_step(model), _unet_step(dense_model)
    name = f"erk-{sparsity}-block-{_block_id(block)}"
    paired(benchmark, sparse_step, dense_step, group=f"cifar10 U-Net s2s train step b{settings.UNET_BATCH}",
           provider=name, rounds=settings.rounds(3))
    if benchmark.stats is None:  # --benchmark-disable
        return
    profiles = {"dense": breakdown.profile_step(dense_step), name: breakdown.profile_step(sparse_step)}
    header = (f"CIFAR-10 DDPM U-Net train step, ERK {sparsity} block {_block_id(block)} masks, batch "
              f"{settings.UNET_BATCH}, {torch.get_num_threads()} threads; one profiled step per model")
    text = (f"{header}\n\n{breakdown.table(profiles)}\n\nWhat the goal asks of the block kernels\n\n"
            f"{breakdown.goal_table(profiles, {'dense': 1.0, name: fraction}, {name: 5.0})}\n")
    out = settings.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"unet_block_{_block_id(block)}_breakdown.md").write_text(text)
    print(f"\n{text}")
