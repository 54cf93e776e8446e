"""Static / RigL / MagRan on small models: exact counts, RigL's growth criterion, optimizer state,
in-place RNN masking, masks in the state dict."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ebsparse.nn import SparseConv2d, SparseLinear
from ebsparse.s2s import MagRan, RigL, Static
from tests.s2s.s2s_models import ConvNet, GRUNet, conv_batch


def _train(model, sp, opt, steps, seed=0):
    for i in range(steps):
        x, y = conv_batch(seed + i)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        if sp.step():
            opt.step()


def test_apply_swaps_modules_with_erk_counts(convnet):
    opt = torch.optim.AdamW(convnet.parameters(), lr=1e-2)
    sp = Static(sparsity=0.8)
    sp.apply(convnet, opt)
    assert isinstance(convnet.conv1, SparseConv2d) and isinstance(convnet.fc2, SparseLinear)
    # the optimizer now trains the swapped modules' parameters
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in convnet.parameters()}
    for t in sp.targets:
        n = t.mask.numel()
        assert int(t.mask.sum()) == n - round((1 - sp.densities[t.name]) * n)
        assert (t.weight[~t.mask] == 0).all()
    assert sp.kept / sp.total == pytest.approx(0.2, abs=0.01)
    assert sp.densities["conv1.weight"] > sp.densities["fc1.weight"]  # ERK: small layers denser


@pytest.mark.parametrize("cls", [RigL, MagRan])
def test_counts_never_drift(convnet, cls):
    opt = torch.optim.Adam(convnet.parameters(), lr=1e-2)
    sp = cls(sparsity=0.7, update_every=2, prune_fraction=0.3)
    sp.apply(convnet, opt)
    before = {t.name: int(t.mask.sum()) for t in sp.targets}
    masks0 = {t.name: t.mask.clone() for t in sp.targets}
    _train(convnet, sp, opt, 30)
    assert sp.updates == 15
    assert {t.name: int(t.mask.sum()) for t in sp.targets} == before
    assert any((t.mask != masks0[t.name]).any() for t in sp.targets)  # the masks did move
    for t in sp.targets:
        assert (t.weight[~t.mask] == 0).all()


def test_dense_gradient_only_on_update_steps(convnet):
    opt = torch.optim.Adam(convnet.parameters(), lr=1e-2)
    sp = RigL(sparsity=0.7, update_every=3)
    sp.apply(convnet, opt)
    seen = []
    for i in range(6):
        seen.append(convnet.fc1.dense_weight_grad)
        x, y = conv_batch(i)
        opt.zero_grad()
        nn.functional.mse_loss(convnet(x), y).backward()
        if i in (0, 2):  # a sparse step's gradient is zero off the mask, the update step's is not
            off = convnet.fc1.weight.grad[~convnet.fc1.mask]
            assert (off == 0).all() if i == 0 else (off != 0).any()
        stepped = sp.step()
        assert stepped == (i not in (2, 5))  # RigL skips the optimizer step on update steps
        if stepped:
            opt.step()
    assert seen == [False, False, True, False, False, True]
    # random growth needs no gradient: MagRan never asks for the dense one
    model = ConvNet()
    magran = MagRan(sparsity=0.5, update_every=1)
    magran.apply(model, torch.optim.Adam(model.parameters()))
    assert not model.fc1.dense_weight_grad


def test_rigl_grows_where_dense_gradient_is_largest_and_resets_moments():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sp = RigL(sparsity=0.6, update_every=4, prune_fraction=0.25, backend="native")
    sp.apply(model, opt)
    layer = model[0]
    x = torch.randn(16, 12)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        assert sp.step()
        opt.step()
    state = opt.state[layer.weight]
    old_mask = layer.mask.clone()
    old_w = layer.weight.detach().clone()
    old_m, old_v = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    assert (old_v[old_mask] > 0).all()
    # the dense gradient of the update step, from a plain nn.Linear holding the same (masked) weights:
    # not from the layer under test, whose gradient is what is being checked
    dense = nn.Linear(12, 10)
    with torch.no_grad():
        dense.weight.copy_(layer.weight * layer.mask)
        dense.bias.copy_(layer.bias)
    dense(x).pow(2).mean().backward()
    grad = dense.weight.grad
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    assert torch.allclose(layer.weight.grad, grad, rtol=1e-5, atol=1e-7)
    assert not sp.step()
    n_active = int(old_mask.sum())
    k = int(0.25 * n_active)
    # expected: drop the k smallest |W| among active, grow the k largest |grad| among the rest
    w_scores = torch.where(old_mask, old_w.abs(), torch.tensor(float("inf")))
    dropped = torch.zeros_like(old_mask).flatten()
    dropped[torch.argsort(w_scores.flatten(), stable=True)[:k]] = True
    kept = old_mask & ~dropped.view_as(old_mask)
    g_scores = torch.where(kept, torch.tensor(-1.0), grad.abs())
    grown = torch.zeros_like(old_mask).flatten()
    grown[torch.argsort(g_scores.flatten(), descending=True, stable=True)[:k]] = True
    grown = grown.view_as(old_mask)
    assert torch.equal(layer.mask, kept | grown)
    assert int(layer.mask.sum()) == n_active
    assert (layer.weight[grown] == 0).all()
    assert torch.equal(layer.weight[kept], old_w[kept])
    changed = ~kept
    assert (state["exp_avg"][changed] == 0).all() and (state["exp_avg_sq"][changed] == 0).all()
    assert torch.equal(state["exp_avg"][kept], old_m[kept]) and torch.equal(state["exp_avg_sq"][kept], old_v[kept])
    # the next (sparse) step trains the grown weights from zero
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    assert sp.step()
    opt.step()
    assert (layer.weight[grown] != 0).any() and (layer.weight[~layer.mask] == 0).all()


def test_gru_weights_stay_sparse_and_train(grunet):
    opt = torch.optim.AdamW(grunet.parameters(), lr=1e-2, weight_decay=0.1)
    sp = RigL(sparsity=0.8, update_every=3, prune_fraction=0.2)
    sp.apply(grunet, opt)
    names = {t.name for t in sp.targets}
    assert {f"rnn.weight_{k}_l{n}{d}" for k in ("ih", "hh") for n in (0, 1) for d in ("", "_reverse")} <= names
    rnn = {t.name: t for t in sp.targets if t.kind == "rnn"}
    start = {n: t.weight.detach().clone() for n, t in rnn.items()}
    counts = {n: int(t.mask.sum()) for n, t in rnn.items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(13):  # ends on a sparse step, after 4 updates
        x, y = torch.randn(4, 7, 5, generator=g), torch.randn(4, 7, 3, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(grunet(x), y).backward()
        if sp.step():
            opt.step()
    assert sp.updates == 4
    for n, t in rnn.items():
        w = getattr(grunet.rnn, n.split(".")[-1])
        assert w is t.weight and int(t.mask.sum()) == counts[n]
        assert (w[~t.mask] == 0).all(), n  # really sparse, weight decay included
        assert (w.grad[~t.mask] == 0).all(), n  # the gradient hook keeps the kept positions only
        assert (opt.state[w]["exp_avg_sq"][~t.mask] == 0).all(), n
        assert (w[t.mask] != start[n][t.mask]).any(), n  # and it did train
    assert "rnn.weight_ih_l0_mask" in grunet.state_dict()


def test_layers_and_exclude_select_weights(grunet):
    sp = Static(sparsity=0.5, layers=("linear",))
    sp.apply(grunet)
    assert [t.name for t in sp.targets] == ["head.weight"]
    sp2 = Static(sparsity=0.5, exclude=("head",))
    sp2.apply(GRUNet())
    assert "head.weight" not in {t.name for t in sp2.targets}
    with pytest.raises(ValueError, match="no weights"):
        Static(sparsity=0.5, layers=("conv",)).apply(GRUNet())


def test_globs_that_match_nothing_are_errors():
    """A typo in exclude left the layer it meant sparse; one in custom_sparsity gave it the ERK level."""
    with pytest.raises(ValueError, match=r"sparsity.exclude: \['haed'\] match no module or parameter"):
        Static(sparsity=0.5, exclude=("haed",)).apply(GRUNet())
    with pytest.raises(ValueError, match=r"sparsity.custom_sparsity: \['haed\*'\] match no weight"):
        Static(sparsity=0.5, custom_sparsity={"haed*": 0.5}).apply(GRUNet())


def test_optimizer_errors(convnet):
    sgd = torch.optim.SGD(convnet.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="SGD.*optimizer_safe=True"):
        RigL(sparsity=0.5).apply(convnet, sgd)
    model = ConvNet()
    RigL(sparsity=0.5, optimizer_safe=True).apply(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="expects 'rigl'"):
        from ebsparse.s2s import SparsityConfig
        RigL(SparsityConfig(method="static"))


def test_masks_survive_state_dict_round_trip(convnet, grunet):
    sp = MagRan(sparsity=0.6, update_every=1, prune_fraction=0.5)
    opt = torch.optim.Adam(convnet.parameters())
    sp.apply(convnet, opt)
    _train(convnet, sp, opt, 3)
    state = convnet.state_dict()
    fresh = ConvNet()
    sp2 = MagRan(sparsity=0.6, update_every=1, prune_fraction=0.5, seed=1)  # different initial masks
    sp2.apply(fresh)
    fresh.load_state_dict(state)
    for a, b in zip(sp.targets, sp2.targets):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
    x, _ = conv_batch(99)
    assert torch.equal(convnet(x), fresh(x))  # the kernel index followed the loaded mask
    sp2.load_state_dict(sp.state_dict() | {"config": sp2.config.to_dict()})
    assert sp2.steps == 3 and torch.equal(sp2.generator.get_state(), sp.generator.get_state())


def test_chirodiff_trains_with_sparse_gru():
    """The paper's sketch model under RigL: every GRU weight (both directions, every layer) is
    sparsified and stays exactly sparse while it trains with AdamW weight decay."""
    from ebsparse.models import ChiroDiff, ChiroDiffConfig

    torch.manual_seed(0)
    model = ChiroDiff(ChiroDiffConfig(hidden_size=16, num_layers=3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sp = RigL(sparsity=0.75, update_every=4, prune_fraction=0.2)
    sp.apply(model, opt)
    rnn = [t for t in sp.targets if t.kind == "rnn"]
    assert len(rnn) == 12  # ih and hh x 3 layers x 2 directions
    counts = {t.name: int(t.mask.sum()) for t in rnn}
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(17):
        x0 = torch.randn(8, 12, 3, generator=g) * 0.1
        noise = torch.randn(8, 12, 3, generator=g)
        t = torch.randint(0, 1000, (8,), generator=g)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x0 + noise, t), noise)
        loss.backward()
        losses.append(float(loss.detach()))
        if sp.step():
            opt.step()
    assert sp.updates == 4
    for t in rnn:
        assert int(t.mask.sum()) == counts[t.name] < t.mask.numel()
        assert (t.weight[~t.mask] == 0).all()
    assert sum(losses[-4:]) < sum(losses[:4])


@settings(max_examples=8)
@given(st.floats(0.05, 0.95), st.floats(0.01, 0.99), st.sampled_from(["erk", "er", "uniform"]),
       st.sampled_from([RigL, MagRan]))
def test_counts_exact_for_any_sparsity_and_fraction(sparsity, fraction, distribution, cls):
    torch.manual_seed(0)
    model = ConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = cls(sparsity=sparsity, distribution=distribution, update_every=1, prune_fraction=fraction)
    sp.apply(model, opt)
    before = {t.name: int(t.mask.sum()) for t in sp.targets}
    for t in sp.targets:
        n = t.mask.numel()
        assert before[t.name] == n - round((1 - sp.densities[t.name]) * n)
    _train(model, sp, opt, 4)
    assert sp.updates == 4
    assert {t.name: int(t.mask.sum()) for t in sp.targets} == before
    assert all((t.weight[~t.mask] == 0).all() for t in sp.targets)


def test_layers_made_dense_stay_plain_modules(convnet):
    sp = RigL(sparsity=0.5, distribution="uniform", custom_sparsity={"conv1": 0.0}, update_every=1)
    opt = torch.optim.Adam(convnet.parameters())
    sp.apply(convnet, opt)
    assert type(convnet.conv1) is nn.Conv2d and "conv1.mask" not in convnet.state_dict()
    assert sp.dense_layers == {"conv1.weight": convnet.conv1.weight.numel()}
    assert "conv1.weight" not in sp.masks() and isinstance(convnet.conv2, SparseConv2d)
    sparse_total = sum(t.mask.numel() for t in sp.targets)
    assert sp.total == sparse_total + 8 * 3 * 9
    assert sp.kept == sum(int(t.mask.sum()) for t in sp.targets) + 8 * 3 * 9
    assert sp.total - sp.kept == sum(round(0.5 * t.mask.numel()) for t in sp.targets)
    _train(convnet, sp, opt, 2)
    assert (convnet.conv1.weight != 0).all()


def test_chirodiff_gru_runs_on_the_sparse_kernels():
    """Static/RigL/MagRan swap ChiroDiff's nn.GRU for a SparseGRU holding the sparsifier's masks
    (same buffer names as the in-place masks had), the recurrence and the input projections run
    on the native kernels, and the model computes what the dense GRU on the masked weights does."""
    from ebsparse import backends
    from ebsparse.models import ChiroDiff, ChiroDiffConfig
    from ebsparse.nn import SparseGRU

    torch.manual_seed(0)
    model = ChiroDiff(ChiroDiffConfig(hidden_size=16, num_layers=2))
    sp = Static(sparsity=0.9, distribution="erk", backend="native")
    sp.apply(model)
    assert isinstance(model.rnn, SparseGRU)
    rnn = {t.name: t for t in sp.targets if t.kind == "rnn"}
    assert set(rnn) == {f"rnn.{n}" for n in model.rnn.weight_names if f"rnn.{n}" not in sp.dense_layers}
    for name, target in rnn.items():
        assert target.mask is getattr(model.rnn, name.split(".")[1] + "_mask")
        assert int(target.mask.sum()) < target.mask.numel()
    assert {f"rnn.{n}_mask" for n in model.rnn.weight_names} <= set(model.state_dict())
    x, t = torch.randn(3, 9, 3), torch.randint(0, 1000, (3,))
    with backends.trace() as calls:
        out = model(x, t)
    assert ("gru_recurrence", "forward", "native") in calls
    reference = model.rnn.to_dense()
    model.rnn, sparse_rnn = reference, model.rnn
    torch.testing.assert_close(out, model(x, t), atol=2e-5, rtol=2e-5)
    model.rnn = sparse_rnn
