"""Block-sparse attention, forward + backward (the output's sum as the loss), CPU fp32:
the native flash-style kernel vs ``scaled_dot_product_attention`` with the same layout's dense
boolean mask (the dense backend), and vs SDPA without a mask.

Shape: batch 2, 6 heads (DiT-S), 1024 tokens, head dim 64, blocks of 64 tokens (16 x 16 blocks);
layouts keep exactly 8 (50% masked) or 4 (75% masked) key blocks per query block, as a band around
the diagonal (a local window, shifted at the edges so that every row keeps the same count).

Run: ``pytest bench/test_block_attention.py --benchmark`` (bench/settings.py lists the environment
variables). Every row is timed alternately with its baseline (bench/timing.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import settings
from bench.timing import paired

B, H, N, D, BLOCK = (1, 2, 128, 16, 16) if settings.QUICK else (2, 6, 1024, 64, 64)
ROUNDS = 7


def band_layout(blocks: int, keep: int) -> torch.Tensor:
    """Each query block keeps ``keep`` consecutive key blocks around itself (clamped at the edges)."""
    lay = torch.zeros(blocks, blocks, dtype=torch.bool)
    for i in range(blocks):
        lo = min(max(0, i - keep // 2), blocks - keep)
        lay[i, lo:lo + keep] = True
    return lay


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, N, D, generator=g).requires_grad_() for _ in range(3)]


def _step(fn):
    q, k, v = _tensors()

    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).sum().backward()

    return step


@pytest.mark.parametrize("masked", [0.5, 0.75], ids=lambda m: f"masked-{m}")
@pytest.mark.parametrize("baseline", ["sdpa-mask", "sdpa"])
def test_block_attention_fwd_bwd(benchmark, masked, baseline):
    from ebsparse.formats.block_layout import dense_mask
    from ebsparse.ops import block_sparse_attention

    torch.set_num_threads(settings.threads())
    nb = N // BLOCK
    layout = band_layout(nb, round(nb * (1 - masked)))
    mask = dense_mask(layout, N, N, BLOCK)
    ours = _step(lambda q, k, v: block_sparse_attention(q, k, v, layout, BLOCK, backend="native"))
    if baseline == "sdpa-mask":
        base = _step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    else:
        base = _step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    kept = float(layout.float().mean())
    gflop = 2 * 2 * B * H * N * N * D * kept * 3.5 / 1e9  # fwd 2 GEMMs, bwd 5 (incl. recompute)
    paired(benchmark, ours, base, group=f"block attention fwd+bwd b{B} h{H} n{N} d{D} block{BLOCK}, "
           f"{masked:.0%} masked", provider="ebsparse-native", baseline_name=baseline,
           rounds=settings.rounds(ROUNDS), gflop=gflop)
