"""Sparse-to-sparse at block granularity: exact block counts from ER/ERK densities, masks that stay
block patterns through RigL / MagRan updates, drop by block norm, grow by block-summed gradient,
optimizer moments reset per block, and the layers a block does not divide left element-wise."""

import warnings

import pytest
import torch
from torch import nn

import ebsparse
from ebsparse.backends import trace
from ebsparse.formats.block import blocks_of, is_block_mask, kept_blocks
from ebsparse.s2s import SparsityConfig


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(sp, model, opt, steps):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if sp.step():
            opt.step()


@pytest.mark.parametrize("method", ["static", "rigl", "magran"])
def test_block_masks_keep_exact_block_counts(method):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cls = {"static": ebsparse.s2s.Static, "rigl": ebsparse.s2s.RigL, "magran": ebsparse.s2s.MagRan}[method]
    sp = cls(sparsity=0.8, distribution="erk", update_every=3, prune_fraction=0.3, granularity="block",
             block=(8, 8), backend="native")
    sp.apply(model, opt)
    assert set(sp.blocks) == {"2.weight", "5.weight"}
    assert set(sp.element_wise) == {"0.weight", "7.weight"}  # 3 input channels, 10 outputs
    counts = {}
    for t in sp.targets:
        if t.name in sp.blocks:
            grid = blocks_of(t.mask, (8, 8))
            counts[t.name] = int(grid.sum())
            assert counts[t.name] == max(1, round(sp.densities[t.name] * grid.numel()))
    before = {t.name: blocks_of(t.mask, (8, 8)).clone() for t in sp.targets if t.name in sp.blocks}
    with trace() as calls:
        _train(sp, model, opt, 7)
    assert {("block_conv2d", "native"), ("block_linear", "native")} <= {(op, b) for op, _, b in calls}
    for t in sp.targets:
        if t.name in sp.blocks:
            assert is_block_mask(t.mask, (8, 8))
            assert int(blocks_of(t.mask, (8, 8)).sum()) == counts[t.name]
            assert not t.weight[~t.mask].any()
    changed = any(not torch.equal(before[n], blocks_of(t.mask, (8, 8))) for t in sp.targets for n in [t.name]
                  if n in sp.blocks)
    assert changed == (method != "static") and sp.updates == (0 if method == "static" else 2)


def test_every_block_layer_keeps_at_least_one_block():
    """round(density * n_blocks) is 0 for a layer of a few large blocks: it would compute only its
    bias, and RigL (which moves a fraction of the kept blocks) could never regrow it."""
    assert (kept_blocks(4, 0.1), kept_blocks(4, 0.0), kept_blocks(40, 0.1)) == (1, 0, 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    sp = ebsparse.s2s.RigL(sparsity=0.9, distribution="uniform", granularity="block", block=(32, 32))
    sp.apply(model)
    assert [int(blocks_of(t.mask, (32, 32)).sum()) for t in sp.targets] == [1, 1]
    layer = nn.Sequential(nn.Linear(64, 64))
    ebsparse.sparsify(layer, pattern="block", block=(32, 32), density=0.1)
    assert int(blocks_of(layer[0].mask, (32, 32)).sum()) == 1


def test_block_layers_no_update_can_change_are_named():
    """floor(prune_fraction * kept blocks) is 0 for a layer under 1 / prune_fraction blocks: RigL
    never changes it. That was silent (the run reported its updates); now apply() warns, `frozen`
    names the layers, and `regrown` counts what the updates really moved."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(80, 64, bias=False), nn.Linear(64, 256, bias=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sp = ebsparse.s2s.RigL(sparsity=0.75, distribution="uniform", update_every=1, prune_fraction=0.1,
                           granularity="block", block=(8, 8), backend="native")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sp.apply(model, opt)
    assert not [w for w in seen if "1 / prune_fraction" in str(w.message)]
    assert [int(blocks_of(t.mask, (8, 8)).sum()) for t in sp.targets] == [20, 64]
    assert sp.frozen == {}  # 2 and 6 blocks move per update
    frozen = ebsparse.s2s.RigL(sparsity=0.9, distribution="uniform", update_every=1, prune_fraction=0.1,
                               granularity="block", block=(8, 8), backend="native")
    small = nn.Sequential(nn.Linear(80, 64, bias=False), nn.Linear(64, 256, bias=False))
    with pytest.warns(UserWarning, match="1 of 2 block layers keep fewer than 1 / prune_fraction = 10 blocks"):
        frozen.apply(small, torch.optim.Adam(small.parameters()))
    assert list(frozen.frozen) == ["0.weight"]  # 8 kept blocks; the second layer keeps 26
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 80)).sum().backward()
        sp.step()
    assert sp.regrown == 2 * (2 + 6) * 64
    assert ebsparse.s2s.RigL(sp.config).state_dict()["regrown"] == 0
    resumed = ebsparse.s2s.RigL(sp.config)
    resumed.load_state_dict(sp.state_dict())
    assert resumed.regrown == sp.regrown


def test_rigl_drops_smallest_block_norm_grows_largest_block_gradient():
    model = nn.Sequential(nn.Linear(16, 16, bias=False))
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    sp = ebsparse.s2s.RigL(sparsity=0.5, distribution="uniform", update_every=1, prune_fraction=0.5,
                           granularity="block", block=(8, 8), backend="native")
    sp.apply(model, opt)
    layer = model[0]
    grid = blocks_of(layer.mask, (8, 8))
    kept = grid.nonzero().tolist()
    dropped = (~grid).nonzero().tolist()
    with torch.no_grad():  # the first kept block is the weaker one
        layer.weight[kept[0][0] * 8:(kept[0][0] + 1) * 8, kept[0][1] * 8:(kept[0][1] + 1) * 8] *= 0.01
    x = torch.zeros(4, 16)
    x[:, dropped[1][1] * 8:(dropped[1][1] + 1) * 8] = 1.0  # gradient only in the columns of dropped[1]
    opt.zero_grad()
    g = torch.zeros(4, 16)
    g[:, dropped[1][0] * 8:(dropped[1][0] + 1) * 8] = 1.0
    layer(x).backward(g)
    opt.state[layer.weight] = {"exp_avg": torch.ones(16, 16), "exp_avg_sq": torch.ones(16, 16)}
    assert sp.step() is False
    new = blocks_of(layer.mask, (8, 8))
    assert not new[tuple(kept[0])] and new[tuple(kept[1])] and new[tuple(dropped[1])] and not new[tuple(dropped[0])]
    moments = opt.state[layer.weight]["exp_avg"]
    assert torch.equal(moments.bool(), expand(new & grid))  # reset on grown and dropped blocks


def expand(grid):
    return grid.repeat_interleave(8, 0).repeat_interleave(8, 1)


def test_a_grouped_conv_is_left_element_wise_for_its_groups():
    model = nn.Sequential(nn.Conv2d(32, 32, 3), nn.Conv2d(32, 48, 3, groups=2))
    sp = ebsparse.s2s.Static(density=0.5, distribution="uniform", granularity="block", block=(16, 16))
    sp.apply(model)
    assert sp.element_wise["1.weight"].startswith("groups=2")  # was "channels (48, 16) ..." of the weight


def test_config_rejects_unsupported_blocks():
    with pytest.raises(ValueError, match="sparsity.block"):
        SparsityConfig(granularity="block", block=(3, 3))
    with pytest.raises(ValueError, match="sparsity.granularity"):
        SparsityConfig(granularity="channel")
    assert SparsityConfig.from_dict({"granularity": "block", "block": [8, 8]}).block == (8, 8)
    with pytest.raises(ValueError, match="sparsity.block: \\[8, 8\\] is set but sparsity.granularity is 'element'"):
        SparsityConfig.from_dict({"block": [8, 8]})  # was ignored: the run trained element-wise


def test_sparsify_block_pattern_on_any_model():
    model = _model()
    report = ebsparse.sparsify(model, pattern="block", block=(16, 16), density=0.5)
    assert report.converted == ["2", "5"] and "not multiples of the block" in report.skipped["0"]
    assert set(report.skipped) == {"0", "7"}
    assert all(is_block_mask(model[i].mask, (16, 16)) for i in (2, 5))
    with pytest.raises(ValueError, match="block: a block pattern needs a block shape"):
        ebsparse.sparsify(_model(), pattern="block", density=0.5)


def test_block_module_state_dict_round_trip_and_mask_check():
    src = ebsparse.SparseConv2d(32, 32, 3, padding=1, pattern="block", block=(16, 16), density=0.5)
    dst = ebsparse.SparseConv2d(32, 32, 3, padding=1, pattern="block", block=(16, 16), density=1.0)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.mask, src.mask) and int(blocks_of(dst.mask, (16, 16)).sum()) == 2
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(dst(x), src(x))
    bad = src.state_dict()
    bad["mask"] = torch.rand(32, 32, 3, 3) < 0.5
    with pytest.raises(RuntimeError, match="not a \\(16, 16\\) block pattern"):
        dst.load_state_dict(bad)
