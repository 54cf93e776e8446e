"""Block patterns: weights kept or dropped in dense (bo x bi) blocks of the (out, in) channel plane.

For a convolution a block is shared by every (kh, kw) tap: block (i, j) keeps or drops
``weight[i*bo:(i+1)*bo, j*bi:(j+1)*bi, :, :]`` as a whole. In the (out, in * kh * kw) view the CPU
and GPU kernels use, a kept block is then one dense (bo x bi * kh * kw) sub-matrix: a micro-GEMM
nine times longer along its reduction than a per-tap block for a 3x3 kernel, with one index entry
for all taps and an im2col panel row range that is contiguous. Per-tap blocks would give each tap
its own pattern and a (bo x bi) GEMM per entry, too short to amortise the per-block overheads.

Supported block shapes, each for a reason:

- ``(1, 8)``: the finest; one output row x 8 inputs (an AVX2 vector, a 32-byte GPU load). Quality
  closest to unstructured; on the CPU it runs like an unstructured row (no reuse across rows).
- ``(4, 4)``: small square blocks; 4 output rows share each input load (the CPU AVX-512 register
  tile has 4 rows), the smallest shape with reuse in both directions.
- ``(8, 8)``: two CPU register tiles per block; on GPUs the smallest block whose tiles feed an
  mma.m16n8k8 instruction after two blocks are stacked.
- ``(16, 16)``: the smallest ``tl.dot`` tile (16 is Triton's minimum dot dimension); on the CPU four
  register tiles per block, 16 input rows (a 3x3 conv: 144) per block.
- ``(32, 32)``: the largest; fewer index entries and longer dense GEMMs, for the most speed at the
  largest cost in quality.

The index (BSR: block CSR and block CSC of the block-level mask) is built once per mask version and
remembers the mask it came from, as :class:`ebsparse.formats.index.PatternIndex` does.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch

from ebsparse.formats.index import (_BITS_DTYPE, _LastChecked, _compressed, described_before, remember_described,
                                    tensor_version)
from ebsparse.formats.masks import check_density

SUPPORTED_BLOCKS = ((1, 8), (4, 4), (8, 8), (16, 16), (32, 32))


def check_block(block, name: str = "block") -> tuple[int, int]:
    """`block` as a (bo, bi) tuple of ints, or raise naming the argument and the supported shapes."""
    try:
        bo, bi = (operator.index(v) for v in block)  # not int(): (16.9, 16) must not become (16, 16)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a pair (bo, bi), one of {list(SUPPORTED_BLOCKS)}, got {block!r}") from None
    if (bo, bi) not in SUPPORTED_BLOCKS:
        raise ValueError(f"{name}: block shape {(bo, bi)} is not supported; expected one of {list(SUPPORTED_BLOCKS)}")
    return bo, bi


def block_unsupported_reason(shape, block) -> str | None:
    """Why a weight of `shape` (out, in, ...) cannot take `block` blocks, or None."""
    bo, bi = check_block(block)
    if len(shape) < 2:
        return f"a block pattern needs a weight with (out, in, ...) dims, got shape {tuple(shape)}"
    if shape[0] % bo or shape[1] % bi:
        return f"channels ({shape[0]}, {shape[1]}) are not multiples of the block ({bo}, {bi})"
    return None


def check_block_shape(shape, block, name: str = "weight") -> tuple[int, int]:
    bo, bi = check_block(block)
    reason = block_unsupported_reason(shape, (bo, bi))
    if reason:
        raise ValueError(f"{name}: {reason}")
    return bo, bi


def block_grid(shape, block) -> tuple[int, int]:
    """(out / bo, in / bi): the number of block rows and block columns."""
    bo, bi = check_block_shape(shape, block)
    return shape[0] // bo, shape[1] // bi


def block_sums(t: torch.Tensor, block, *, square: bool = False) -> torch.Tensor:
    """(out / bo, in / bi) sums over each block of `t` (all taps included); of t**2 if `square`."""
    bo, bi = check_block_shape(t.shape, block, "tensor")
    x = t.detach().to(torch.float64)
    x = x * x if square else x
    x = x.reshape(t.shape[0] // bo, bo, t.shape[1] // bi, bi, -1)
    return x.sum(dim=(1, 3, 4))


def block_norms(weight: torch.Tensor, block) -> torch.Tensor:
    """L2 norm of every block of `weight` (the magnitude a block is kept or dropped by)."""
    return block_sums(weight, block, square=True).sqrt()


def expand_blocks(block_mask: torch.Tensor, shape, block) -> torch.Tensor:
    """The element mask of `shape` from a (out / bo, in / bi) bool block mask."""
    bo, bi = check_block_shape(shape, block)
    m = block_mask.repeat_interleave(bo, 0).repeat_interleave(bi, 1)
    return m.reshape(m.shape + (1,) * (len(shape) - 2)).expand(tuple(shape)).contiguous()


def blocks_of(mask: torch.Tensor, block) -> torch.Tensor:
    """The (out / bo, in / bi) block mask of an element mask that follows the block pattern (raises
    ValueError naming the first block that is partly kept)."""
    check_block_mask(mask, block)
    bo, bi = check_block(block)
    return mask[::bo, ::bi].reshape(mask.shape[0] // bo, mask.shape[1] // bi, -1)[..., 0].clone()


def check_block_mask(mask: torch.Tensor, block, name: str = "mask") -> None:
    """Raise ValueError unless `mask` keeps or drops whole (bo x bi) blocks (all taps alike)."""
    bo, bi = check_block_shape(mask.shape, block, name)
    per = bo * bi * math.prod(mask.shape[2:])
    counts = mask.reshape(mask.shape[0] // bo, bo, mask.shape[1] // bi, bi, -1).sum(dim=(1, 3, 4))
    bad = ((counts != 0) & (counts != per)).nonzero()
    if bad.numel():
        i, j = bad[0].tolist()
        raise ValueError(f"{name}: not a ({bo}, {bi}) block pattern: block ({i}, {j}) keeps {int(counts[i, j])} of "
                         f"{per} weights (a block is kept or dropped whole, every tap alike)")


def is_block_mask(mask: torch.Tensor, block) -> bool:
    try:
        check_block_mask(mask, block)
    except ValueError:
        return False
    return True


def kept_blocks(n_blocks: int, density: float) -> int:
    """round(density * n_blocks), but at least one block where density > 0: the blocks a layer of this
    density keeps (exact counts in blocks). A layer of a few large blocks would otherwise round to
    none: it would compute only its bias, and RigL, which moves a fraction of the kept blocks, could
    never regrow it."""
    density = check_density(density)
    kept = int(round(density * n_blocks))
    return max(kept, 1) if density > 0 and n_blocks > 0 else kept


def _from_order(order: torch.Tensor, grid: tuple[int, int], kept: int) -> torch.Tensor:
    m = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    m[order[:kept]] = True
    return m.view(grid)


def magnitude_block_mask(weight: torch.Tensor, density: float, block) -> torch.Tensor:
    """Element mask keeping the `kept_blocks` blocks of largest L2 norm (ties: the lower flat block
    index, so every rank computes the same mask)."""
    grid = block_grid(weight.shape, block)
    kept = kept_blocks(grid[0] * grid[1], density)
    order = torch.sort(block_norms(weight, block).flatten(), descending=True, stable=True).indices
    return expand_blocks(_from_order(order, grid, kept), weight.shape, block).to(weight.device)


def random_block_mask(shape, density: float, block, *, generator: torch.Generator | None = None,
                      device=None) -> torch.Tensor:
    """Element mask keeping exactly `kept_blocks` uniformly random blocks."""
    grid = block_grid(tuple(shape), block)
    kept = kept_blocks(grid[0] * grid[1], density)
    order = torch.randperm(grid[0] * grid[1], generator=generator)
    return expand_blocks(_from_order(order, grid, kept), tuple(shape), block).to(device or "cpu")


@dataclass(frozen=True)
class BlockIndex:
    """BSR of a block mask: block CSR (brow_ptr, bcol_idx) and block CSC (bcol_ptr, brow_idx), int32,
    over the (out / bo, in / bi) block grid; `rows`/`cols` are the weight's (out, in * kh * kw) view."""

    rows: int
    cols: int
    block: tuple[int, int]
    brow_ptr: torch.Tensor
    bcol_idx: torch.Tensor
    bcol_ptr: torch.Tensor
    brow_idx: torch.Tensor
    taps: int = 1  # kh * kw of a conv weight (every block covers all of them)
    mask: torch.Tensor | None = field(default=None, repr=False, compare=False)
    mask_version: int | None = field(default=None, repr=False, compare=False)  # None: not to be trusted
    _bits: dict = field(default_factory=dict, repr=False, compare=False)
    _checked: _LastChecked | None = field(default=None, repr=False, compare=False)

    @property
    def nnzb(self) -> int:
        return int(self.bcol_idx.numel())

    @property
    def nnz(self) -> int:
        return self.nnzb * self.block[0] * self.block[1] * self.taps

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.rows * self.cols)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.brow_ptr, self.bcol_idx, self.bcol_ptr, self.brow_idx

    def describes(self, mask: torch.Tensor) -> bool:
        """Whether this index is the pattern of `mask` now (free for the mask it was built from)."""
        version = tensor_version(mask)
        if described_before(self, mask, version):
            return True
        if mask.dim() < 2 or mask.shape[0] != self.rows or math.prod(mask.shape[1:]) != self.cols \
                or not is_block_mask(mask, self.block):
            return False
        built = build_block_index(mask, self.block)
        # All four, as PatternIndex.describes: the backward reads the block CSC.
        same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(built.tensors(), self.tensors()))
        if same:
            remember_described(self, mask, version)
        return same

    def bits(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`mask` as integers the width of `dtype` (all ones where kept), cached per dtype."""
        bits = self._bits.get(dtype)
        if bits is None:
            bits = self._bits[dtype] = mask.to(_BITS_DTYPE[dtype]).neg_()
        return bits


def build_block_index(mask: torch.Tensor, block) -> BlockIndex:
    """The BSR index of `mask` (bool, (out, in, ...), following the (bo, bi) block pattern)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    bo, bi = check_block(block)
    grid = blocks_of(mask, (bo, bi)).cpu()
    brow_ptr, bcol_idx = _compressed(grid)
    bcol_ptr, brow_idx = _compressed(grid.t())
    dev = mask.device
    return BlockIndex(mask.shape[0], math.prod(mask.shape[1:]), (bo, bi), brow_ptr.to(dev), bcol_idx.to(dev),
                      bcol_ptr.to(dev), brow_idx.to(dev), math.prod(mask.shape[2:]), mask, tensor_version(mask))
