"""One-head self-attention over pixels in the channels-first layout of the DDPM U-Net's AttnBlock.

``pixel_attention(q, k, v, scale)`` is ``v @ softmax(scale * q^T k)^T`` on (B, C, N) tensors (N
pixels), as the DDIM code computes it with bmm. Same products, fewer passes over memory: the scale is
the matmul's alpha, the probabilities' gradient comes out contiguous (autograd's permuted one was
copied before the softmax backward), and ``pixel_attention_stacked`` takes q, k, v as one (B, 3C, N)
tensor (a stacked q/k/v convolution's output, ebsparse.nn.fused) and writes their gradients straight
into one (B, 3C, N) buffer, where a split's backward would concatenate three. At one thread this is
~20% faster than the autograd form at 8 x 256 x 16x16 and ~35% at 8 x 128 x 32x32 (bench/NOTES.md).
F.scaled_dot_product_attention measured slower than both on the CPU at these shapes.

A second-order gradient is exact: with ``create_graph=True`` the backward recomputes the softmax from
q and k and runs differentiable ops. Under autocast the reference's plain ops run (autocast chooses
each product's dtype).
"""

from __future__ import annotations

import torch

__all__ = ["pixel_attention", "pixel_attention_stacked"]


def _check(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 3 or not t.is_floating_point():
        got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a floating (batch, channels, pixels) tensor, got {got}")


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The DDIM code's ops. Under autocast these run instead of the Function: autocast picks each
    product's dtype, where the Function's backward needs one dtype throughout."""
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * scale, dim=2)
    return torch.bmm(v, w.permute(0, 2, 1))


def _autocast(t: torch.Tensor) -> bool:
    device = t.device.type  # "meta" (MAC counting) has no autocast
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    b, _, n = q.shape
    # beta=0: the expanded input is never read (one element, no (B, N, N) allocation)
    return torch.baddbmm(q.new_zeros(1, 1, 1).expand(b, n, n), q.transpose(1, 2), k, beta=0, alpha=scale)


def _gradients(q, k, v, p, g, scale, dq=None, dk=None, dv=None):
    """(dq, dk, dv) of ``out = v @ p^T``, ``p = softmax(scale * q^T k)``; written into dq/dk/dv when given."""
    dv = torch.bmm(g, p) if dv is None else torch.bmm(g, p, out=dv)
    dp = torch.bmm(g.transpose(1, 2), v)  # (B, N_q, N_k), contiguous
    ds = torch._softmax_backward_data(dp, p, 2, p.dtype)
    if dk is None:
        return torch.bmm(k, ds.transpose(1, 2)) * scale, torch.bmm(q, ds) * scale, dv
    # dq and dk are views of a stacked buffer (a batch stride of 3C N): ATen runs a product `out=`
    # such a view one sample at a time, about twice as slow at 64 x 64 as one batched product into a
    # contiguous tensor and a copy.
    product = q.new_empty(q.shape)
    dq.copy_(torch.baddbmm(product, k, ds.transpose(1, 2), beta=0, alpha=scale, out=product))
    dk.copy_(torch.baddbmm(product, q, ds, beta=0, alpha=scale, out=product))
    return dq, dk, dv


class _PixelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scale: float, *tensors: torch.Tensor) -> torch.Tensor:
        q, k, v = tensors[0].chunk(3, dim=1) if len(tensors) == 1 else tensors
        p = torch.softmax(_scores(q, k, scale), dim=2)
        ctx.save_for_backward(*tensors, p)
        ctx.scale = scale
        return torch.bmm(v, p.transpose(1, 2))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        *tensors, p = ctx.saved_tensors
        stacked = len(tensors) == 1
        q, k, v = tensors[0].chunk(3, dim=1) if stacked else tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable ops only, p as a function of q, k
            p = torch.softmax(_scores(q, k, ctx.scale), dim=2)
            grads = _gradients(q, k, v, p, g, ctx.scale)
            return (None, torch.cat(grads, dim=1)) if stacked else (None, *grads)
        if stacked:
            buffer = g.new_empty(tensors[0].shape)
            _gradients(q, k, v, p, g, ctx.scale, *buffer.chunk(3, dim=1))
            return None, buffer
        return (None, *_gradients(q, k, v, p, g, ctx.scale))


def pixel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``v @ softmax(scale * q^T k, -1)^T`` for q, k, v of shape (B, C, N): (B, C, N).

    Raises ValueError naming a tensor that is not a floating 3-D one or whose shape differs from q's."""
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check(t, name)
        if t.shape != q.shape or t.dtype != q.dtype:
            raise ValueError(f"{name}: expected q's shape and dtype {tuple(q.shape)} {q.dtype}, "
                             f"got {tuple(t.shape)} {t.dtype}")
    if _autocast(q):
        return _reference(q, k, v, scale)
    return _PixelAttention.apply(float(scale), q, k, v)


def pixel_attention_stacked(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """`pixel_attention` of ``qkv.chunk(3, dim=1)``: qkv (B, 3C, N) holds q, k, v one after the other
    along the channels; its gradient comes back as one tensor. Raises ValueError if qkv is not a
    floating 3-D tensor with a channel count divisible by 3."""
    _check(qkv, "qkv")
    if qkv.shape[1] % 3:
        raise ValueError(f"qkv: expected q, k, v stacked along dim 1 (a multiple of 3 channels), "
                         f"got {qkv.shape[1]} channels")
    if _autocast(qkv):
        return _reference(*qkv.chunk(3, dim=1), scale)
    return _PixelAttention.apply(float(scale), qkv)
