"""Under torch.distributed every rank ends every update with the identical mask (gloo, 2 processes).

The ranks see different data and no DDP averages their gradients or weights, so only the all-reduce of
the drop and grow scores inside the sparsifier can make their masks agree.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def test_identical_masks_across_two_gloo_ranks(tmp_path, monkeypatch):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from s2s_dist_worker import run_rank
    mp.spawn(run_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for method in ("rigl", "magran"):
        r0, r1 = (torch.load(tmp_path / f"{method}_rank{r}.pt") for r in (0, 1))
        assert len(r0["history"]) == len(r1["history"]) == 3
        for m0, m1 in zip(r0["history"], r1["history"]):
            for name in m0:
                assert torch.equal(m0[name], m1[name]), (method, name)
        # the ranks did train apart (different data), so the agreement is the reduction's doing
        assert any(not torch.equal(r0["weights"][n], r1["weights"][n]) for n in r0["weights"])
