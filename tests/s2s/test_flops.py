"""FLOPs accounting (Evci et al.) against hand-computed counts."""

import pytest
import torch
from torch import nn

from ebsparse.s2s import flops_report, train_flops_per_step


def test_linear_and_conv_flops_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(100, 20), nn.Linear(20, 5))
    rep = flops_report(model, (torch.zeros(1, 3, 5, 5),), {"0.weight": 0.5, "2.weight": 0.25, "3.weight": 1.0})
    conv_w, conv_b = 4 * 5 * 5 * 27, 4 * 5 * 5
    dense = conv_w + conv_b + 100 * 20 + 20 + 20 * 5 + 5
    sparse = dense - conv_w * 0.5 - 100 * 20 * 0.75
    assert rep.dense_forward == 2 * dense and rep.sparse_forward == pytest.approx(2 * sparse)
    assert rep.test_ratio == pytest.approx(sparse / dense)
    want = [("0.weight", 2 * conv_w), ("2.weight", 4000), ("3.weight", 200)]
    assert [(layer.name, layer.dense) for layer in rep.layers] == want
    assert "total forward" in rep.table()
    # the weights alone, without the biases: what the kernels' share of the work is
    weights = conv_w + 100 * 20 + 20 * 5
    assert rep.dense_weights == 2 * weights
    assert rep.weight_ratio == pytest.approx((weights - conv_w * 0.5 - 100 * 20 * 0.75) / weights)


def test_weight_ratio_leaves_out_attention_products():
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24, bias=False)

        def forward(self, x):  # (B, N, 8)
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v

    rep = flops_report(Attend(), (torch.zeros(1, 6, 8),), {"qkv.weight": 0.25})
    products = 2 * 6 * 6 * 8  # q k^T and p v, MACs
    assert rep.dense_forward == 2 * (6 * 8 * 24 + products)
    assert rep.weight_ratio == pytest.approx(0.25)
    assert rep.test_ratio > 0.25  # the products do not shrink
    with pytest.raises(ValueError, match="dense_weights"):
        flops_report(nn.Softmax(dim=-1), (torch.zeros(2, 3),), {}).weight_ratio


def test_train_flops_follow_evci():
    f_s, f_d = 30.0, 100.0
    assert train_flops_per_step("dense", f_s, f_d) == 300
    assert train_flops_per_step("static", f_s, f_d) == train_flops_per_step("magran", f_s, f_d) == 90
    assert train_flops_per_step("rigl", f_s, f_d, 4) == pytest.approx((3 * 30 * 4 + 2 * 30 + 100) / 5)
    model = nn.Linear(10, 10, bias=False)
    rep = flops_report(model, (torch.zeros(1, 10),), {"weight": 0.3})
    assert rep.train_ratio("static") == pytest.approx(0.3)
    assert rep.train_ratio("rigl", 100) == pytest.approx((3 * 0.3 * 100 + 2 * 0.3 + 1) / 101 / 3)
    with pytest.raises(ValueError, match="update_every"):
        train_flops_per_step("rigl", f_s, f_d)
    with pytest.raises(ValueError, match="method"):
        train_flops_per_step("set", f_s, f_d)


def test_gru_weights_are_counted():
    gru = nn.GRU(5, 8, bidirectional=True)
    x = torch.zeros(7, 2, 5)  # (T, B, in)
    dens = {"weight_ih_l0": 0.5, "weight_hh_l0": 0.5, "weight_ih_l0_reverse": 1.0, "weight_hh_l0_reverse": 1.0}
    rep = flops_report(gru, (x,), dens)
    ih, hh = 14 * 3 * 8 * 5, 14 * 3 * 8 * 8
    assert rep.dense_forward == 2 * 2 * (ih + hh)
    assert rep.sparse_forward == pytest.approx(2 * (1.5 * (ih + hh)))
    with pytest.raises(ValueError, match="did not take part"):
        flops_report(gru, (x,), {"nope": 0.5})
