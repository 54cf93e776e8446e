"""``upsample_nearest_2x(x)``: ``F.interpolate(x, scale_factor=2.0, mode="nearest")`` for (B, C, H, W).

ATen's CPU forward of that call took 8.4 ms at 8 x 256 x 16x16 on one core (it makes the result
contiguous through an extra copy), where writing each value into its 2x2 block as one broadcast copy
takes 2.6 ms; its backward (2.1 ms) is kept, as a plain sum over the 2x2 blocks of the expanded view
runs 6x slower. Values and gradients are identical to the interpolate call (copies and the same
backward). Other layouts (channels-last), empty tensors (which ATen refuses) and torch.compile run
F.interpolate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample_nearest_2x"]


class _UpsampleNearest2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ctx.input_size = (b, c, h, w)
        out = x.new_empty(b, c, 2 * h, 2 * w)
        out.view(b, c, h, 2, w, 2).copy_(x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # linear in grad and independent of x, so differentiable again as it is
        b, c, h, w = ctx.input_size
        return torch.ops.aten.upsample_nearest2d_backward(grad, [2 * h, 2 * w], [b, c, h, w], 2.0, 2.0)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of a (B, C, H, W) tensor, as F.interpolate computes it.
    Raises ValueError naming `x` if it is not 4-D."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a (batch, channels, height, width) tensor, got {got}")
    if torch.compiler.is_compiling() or not x.is_contiguous() or x.numel() == 0:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return _UpsampleNearest2x.apply(x)
