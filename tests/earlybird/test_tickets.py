"""Mask distance, the FIFO ticket test and the distance matrix, on hand-made masks."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ebsparse.earlybird.heatmap import save_distance_heatmap
from ebsparse.earlybird.tickets import TicketTracker, distance_matrix
from ebsparse.pruning.masks import ChannelMask, hamming_distance


def mask(*bits_per_group):
    return ChannelMask({f"g{i}": torch.tensor(b, dtype=torch.bool) for i, b in enumerate(bits_per_group)})


def flipped(m: ChannelMask, n: int) -> ChannelMask:
    """``m`` with the first ``n`` entries of the concatenated vector flipped."""
    v = m.vector().clone()
    v[:n] = ~v[:n]
    out, i = {}, 0
    for k, g in m.keep.items():
        out[k] = v[i:i + g.numel()]
        i += g.numel()
    return ChannelMask(out)


def test_distance_is_normalised_hamming_over_all_groups():
    a = mask([1, 1, 0, 0], [1, 0])
    b = mask([1, 0, 0, 1], [1, 1])
    assert hamming_distance(a, b) == pytest.approx(3 / 6)
    assert hamming_distance(a, a) == 0.0


@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=12), min_size=1, max_size=4).flatmap(
    lambda groups: st.tuples(st.just(groups), st.lists(st.booleans(), min_size=sum(map(len, groups)),
                                                       max_size=sum(map(len, groups))))))
def test_distance_matrix_matches_pairwise_hamming(data):
    groups, other = data
    a = mask(*groups)
    flat = torch.tensor(other)
    sizes = [len(g) for g in groups]
    b = ChannelMask({f"g{i}": part for i, part in enumerate(torch.split(flat, sizes))})
    d = distance_matrix([a, b, a])
    assert d.shape == (3, 3)
    assert torch.equal(d, d.T) and torch.all(d.diagonal() == 0)
    assert d[0, 1].item() == pytest.approx(hamming_distance(a, b))
    assert d[0, 1].item() == pytest.approx(float((a.vector() != flat).float().mean()))


def test_ticket_is_first_epoch_within_eta_of_the_four_before():
    base = mask([1] * 10 + [0] * 10)  # 20 channels: one flip = distance 0.05
    t = TicketTracker(eta=0.1, queue_length=5)
    # epochs 0..2 move a lot, then the mask settles: 3, 4, 5, 6 differ by <= 2 flips from 7 only from epoch 7 on
    seq = [flipped(base, 10), flipped(base, 8), flipped(base, 6), flipped(base, 2), flipped(base, 1),
           base, base, base]
    found = [t.update(m, step=10 * (i + 1)) for i, m in enumerate(seq)]
    # epoch 6: window 2..5 includes epoch 2 (6 flips from base = 0.3 > eta) -> no; epoch 7: window 3..6 all <= 0.1
    assert found == [False] * 7 + [True]
    assert t.ticket_epoch == 7 and t.ticket_step == 80
    assert max(t.queue_distances()) <= 0.1


def test_ticket_stays_put_and_masks_keep_coming():
    t = TicketTracker(eta=0.1, queue_length=2)
    a = mask([1, 0, 1, 0])
    t.update(a, 1)
    assert t.update(a, 2) and t.ticket_epoch == 1
    t.update(flipped(a, 4), 3)
    assert t.ticket_epoch == 1 and len(t.masks) == 3
    assert t.distances().shape == (3, 3)


def test_no_ticket_when_masks_keep_moving():
    t = TicketTracker(eta=0.1, queue_length=3)
    a = mask([1, 0] * 5)
    for i in range(6):  # alternating masks 0.2 and 0.4 away from ``a``: 0.2 apart, never within eta
        t.update(flipped(a, 2 * (i % 2) + 2), step=i + 1)
    assert not t.found and t.ticket_step is None and t.ticket_mask is None


def test_tracker_state_round_trip_is_json():
    import json

    t = TicketTracker(eta=0.2, queue_length=3)
    for i, n in enumerate([3, 1, 0, 0]):
        t.update(flipped(mask([1, 0, 1, 0, 1]), n), step=i + 1)
    state = json.loads(json.dumps(t.state_dict()))
    u = TicketTracker(eta=0.2, queue_length=3)
    u.load_state_dict(state)
    assert u.ticket_epoch == t.ticket_epoch and u.steps == t.steps
    assert torch.equal(u.distances(), t.distances())
    with pytest.raises(ValueError, match="eta"):
        TicketTracker(eta=0.1, queue_length=3).load_state_dict(state)


@pytest.mark.parametrize("kwargs, match", [({"eta": 1.5}, "eta"), ({"eta": True}, "eta"),
                                           ({"queue_length": 1}, "queue_length"), ({"queue_length": 2.0}, "queue_length")])
def test_tracker_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TicketTracker(**kwargs)


def test_tracker_rejects_masks_of_another_model_and_old_steps():
    t = TicketTracker()
    t.update(mask([1, 0]), 5)
    with pytest.raises(ValueError, match="different groups"):
        t.update(mask([1, 0, 1]), 6)
    with pytest.raises(ValueError, match="step"):
        t.update(mask([1, 0]), 5)


def test_heatmap_png(tmp_path):
    from PIL import Image

    d = distance_matrix([flipped(mask([1, 0] * 8), n) for n in (6, 3, 1, 0, 0)])
    p = save_distance_heatmap(d, tmp_path / "d.png", title="test", ticket_epoch=4)
    img = np.asarray(Image.open(p).convert("RGB"))
    assert img.shape[0] > 5 * 6 and img.shape[1] > 5 * 6
    assert (img == [220, 0, 0]).all(axis=-1).any()  # the ticket outline
    with pytest.raises(ValueError, match="square"):
        save_distance_heatmap(np.zeros((2, 3)), tmp_path / "bad.png")
