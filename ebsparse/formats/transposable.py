"""Transposable 2:4 masks (Hubara et al., NeurIPS 2021): 2 kept of every 4 along both dimensions in
every aligned 4x4 block, so that W and W^T are both 2:4 and the backward's grad-input GEMM
(dY . W, i.e. a GEMM with W^T as the sparse operand) runs on sparse tensor cores too.

A linear weight (M, K) is tiled into 4x4 blocks; a conv weight (Co, Ci, KH, KW) is tiled per tap
(kh, kw) over (Co, Ci), so its 2:4 groups run along input channels as the plain 2:4 pattern's do
and along output channels for the transposed GEMM.

Selection by magnitude is exact here, not the paper's 2-approximation or min-cost flow: the blocks
are independent and a 4x4 block has only 90 transposable patterns, so scoring every pattern of
every block (one (blocks, 16) x (16, 90) product) finds the one keeping the largest total |w|.
`transposable_2_4_mask_reference` does the same with Python loops (the test oracle), and
`greedy_transposable_2_4_mask` is the paper's greedy baseline.
"""

from __future__ import annotations

import itertools

import torch

_ROW_CHOICES = [c for c in itertools.combinations(range(4), 2)]  # 6 ways to keep 2 of 4


def _patterns() -> torch.Tensor:
    """The 90 4x4 bool matrices with two True in every row and column, in a fixed order (rows'
    choices in lexicographic order), which is also the tie-break: the first best pattern wins."""
    out = []
    for rows in itertools.product(_ROW_CHOICES, repeat=4):
        block = torch.zeros(4, 4, dtype=torch.bool)
        for r, cols in enumerate(rows):
            block[r, list(cols)] = True
        if bool((block.sum(0) == 2).all()):
            out.append(block)
    return torch.stack(out)


PATTERNS = _patterns()  # (90, 4, 4)


def _check_shape(shape, name: str) -> None:
    shape = tuple(shape)
    if len(shape) == 2:
        if shape[0] % 4 or shape[1] % 4:
            raise ValueError(f"{name}: a transposable 2:4 linear weight needs out_features and in_features "
                             f"multiples of 4, got shape {shape}")
    elif len(shape) == 4:
        if shape[0] % 4 or shape[1] % 4:
            raise ValueError(f"{name}: a transposable 2:4 conv weight needs out_channels and in_channels "
                             f"multiples of 4, got shape {shape}")
    else:
        raise ValueError(f"{name}: expected a linear (out, in) or conv (out, in, kh, kw) tensor, got shape {shape}")


def _blocks(t: torch.Tensor) -> torch.Tensor:
    """(nblocks, 4, 4) view-copy of the 4x4 blocks: (M/4 * K/4) for linear, per tap for conv."""
    if t.dim() == 4:
        t = t.permute(2, 3, 0, 1).reshape(-1, t.shape[1])  # (KH*KW*Co, Ci): taps stacked over Co
    m, k = t.shape
    return t.reshape(m // 4, 4, k // 4, 4).permute(0, 2, 1, 3).reshape(-1, 4, 4)


def _unblocks(blocks: torch.Tensor, shape) -> torch.Tensor:
    shape = tuple(shape)
    if len(shape) == 2:
        m, k = shape
        return blocks.reshape(m // 4, k // 4, 4, 4).permute(0, 2, 1, 3).reshape(m, k)
    co, ci, kh, kw = shape
    rows = blocks.reshape(kh * kw * co // 4, ci // 4, 4, 4).permute(0, 2, 1, 3).reshape(kh, kw, co, ci)
    return rows.permute(2, 3, 0, 1).contiguous()


def transposable_2_4_mask(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask of `weight`'s shape keeping, in every 4x4 block, the transposable 2:4 pattern with
    the largest sum of |w| (ties: the first in `PATTERNS`)."""
    _check_shape(weight.shape, "weight")
    blocks = _blocks(weight.detach().abs().float())
    if blocks.numel() == 0:
        return torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    patterns = PATTERNS.to(weight.device)
    scores = blocks.reshape(-1, 16) @ patterns.reshape(-1, 16).T.float()
    return _unblocks(patterns[scores.argmax(1)], weight.shape)


def transposable_2_4_mask_reference(weight: torch.Tensor) -> torch.Tensor:
    """Python loops over blocks and patterns: the oracle of `transposable_2_4_mask`."""
    _check_shape(weight.shape, "weight")
    blocks = _blocks(weight.detach().abs().double().cpu())
    chosen = []
    for block in blocks.tolist():
        best, best_score = None, -1.0
        for pattern in PATTERNS.tolist():
            score = sum(block[r][c] for r in range(4) for c in range(4) if pattern[r][c])
            if score > best_score:
                best, best_score = pattern, score
        chosen.append(best)
    out = torch.tensor(chosen, dtype=torch.bool).reshape(-1, 4, 4)
    return _unblocks(out, weight.shape).to(weight.device)


def greedy_transposable_2_4_mask(weight: torch.Tensor) -> torch.Tensor:
    """Hubara et al.'s greedy: in each block, take entries by decreasing |w| while their row and
    column each hold fewer than 2; a block where that gets stuck short of a full pattern takes the
    exact choice instead. Kept for comparison (the exact choice is as cheap)."""
    _check_shape(weight.shape, "weight")
    blocks = _blocks(weight.detach().abs().double().cpu())
    exact = _blocks(transposable_2_4_mask(weight.detach().cpu()))
    chosen = []
    for b, block in enumerate(blocks):
        order = torch.argsort(block.reshape(-1), descending=True, stable=True).tolist()
        pick = torch.zeros(4, 4, dtype=torch.bool)
        for i in order:
            r, c = divmod(i, 4)
            if pick[r].sum() < 2 and pick[:, c].sum() < 2:
                pick[r, c] = True
        chosen.append(pick if int(pick.sum()) == 8 else exact[b])
    return _unblocks(torch.stack(chosen), weight.shape).to(weight.device)


def is_transposable_2_4(mask: torch.Tensor) -> bool:
    """True when every aligned 4x4 block (per tap for conv) keeps 2 of 4 along both dimensions."""
    try:
        _check_shape(mask.shape, "mask")
    except ValueError:
        return False
    blocks = _blocks(mask.to(torch.int8))
    return bool((blocks.sum(1) == 2).all() and (blocks.sum(2) == 2).all())
