"""The dense backend: masked dense PyTorch (MKL/oneDNN/cuBLAS). Runs everywhere; it is the fallback
that keeps a sparse layer from ever being slower than dense, and the one dense path: a layer on the
dense path, the timing baseline and an explicit `backend="dense"` all run these kernels.

Dropped weights are zeroed bitwise (`zero_dropped`), so they contribute exactly zero whatever they
hold, as on the sparse backends that never read them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ebsparse.backends.base import Backend
from ebsparse.backends.pointwise import dense_conv2d, is_pointwise, pointwise_conv2d_grads
from ebsparse.formats.index import zero_dropped
from ebsparse.formats.twofour import magnitude_2_4_rows, pack_2_4_rows, unpack_2_4_rows


def masked_sdpa(inputs) -> torch.Tensor:
    """Block-sparse attention as SDPA with the layout's dense boolean mask (autograd through it, so
    the eager dense path differentiates SDPA itself); a query row with no kept key gives 0."""
    from ebsparse.formats.block_layout import dense_mask

    n = inputs.query.shape[-2]
    mask = dense_mask(inputs.layout.to(inputs.device), n, n, inputs.block_size).unsqueeze(0)
    live = mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(inputs.query, inputs.key, inputs.value, attn_mask=mask | ~live,
                                         scale=inputs.scale)
    # Eager only (under torch.compile this runs inside the custom op), so the test may read data.
    return out * live if not bool(live.all()) else out


def _masked_weight(inputs) -> torch.Tensor:
    """The weight with dropped positions exactly zero, made once per call and kept for the backward
    (kernels run where autograd does not record, so no detach is needed)."""
    weight = inputs.state.get("masked_weight")
    if weight is None:
        bits = inputs.pattern.bits(inputs.mask, inputs.weight.dtype)
        weight = inputs.state["masked_weight"] = zero_dropped(inputs.weight, bits)
    return weight


def _masked_grad(inputs, grad_weight: torch.Tensor) -> torch.Tensor:
    """Zero the weight gradient off the pattern, in place (unless the full gradient was asked for)."""
    if not inputs.dense_weight_grad:
        bits = inputs.pattern.bits(inputs.mask, grad_weight.dtype)
        grad_weight.view(bits.dtype).bitwise_and_(bits)
    return grad_weight



def qkv_sdpa(qkv: torch.Tensor, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """SDPA on q, k, v unbound from a fused qkv (B, N, 3 * H * D) -> (B, N, H * D): `qkv_attention`'s
    dense path, and what it runs under torch.compile."""
    b, n, width = qkv.shape
    d = width // (3 * num_heads)
    # unbind, not qkv[0], qkv[1], qkv[2]: its backward stacks the three gradients in one copy,
    # where each index's backward would fill a zero tensor of all of qkv and add them up.
    q, k, v = (t.transpose(1, 2) for t in qkv.reshape(b, n, 3, num_heads, d).unbind(2))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2).reshape(b, n, num_heads * d)

class DenseBackend(Backend):
    name = "dense"
    # gru_recurrence: SparseGRU's dense path is PyTorch's own GRU on the masked weights (ebsparse/nn/gru.py),
    # which runs wherever torch does; it has no kernel method here because nothing dispatches to it.
    ops = frozenset({"linear", "conv2d", "block_linear", "block_conv2d", "prune_2_4", "compress_2_4",
                     "decompress_2_4", "group_norm_silu", "block_attention", "gru_recurrence", "gelu_tanh",
                     "dropout", "qkv_attention", "layer_norm_modulate", "gated_residual", "residual_norm_modulate",
                     "linear_gelu_tanh", "mlp_gelu_tanh"})

    def linear_forward(self, inputs):
        return F.linear(inputs.input, _masked_weight(inputs), inputs.bias)

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        grad_input = grad_output.mm(_masked_weight(inputs)) if input_grad else None
        grad_weight = _masked_grad(inputs, grad_output.t().mm(inputs.input)) if weight_grad else None
        return grad_input, grad_weight

    def linear_gelu_tanh_forward(self, inputs):
        pre = inputs.state["pre"] = F.linear(inputs.input, _masked_weight(inputs), inputs.bias)
        return F.gelu(pre, approximate="tanh")

    def linear_gelu_tanh_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_weight, grad_bias) or None), unfused: ATen's GELU backward, then the
        linear's."""
        grad_pre = torch.ops.aten.gelu_backward(grad_output, inputs.state["pre"], approximate="tanh")
        grad_input, grad_weight = self.linear_backward(inputs, grad_pre, input_grad, weight_grad)
        grad_bias = grad_pre.sum(0) if weight_grad and inputs.bias is not None else None
        return grad_input, (grad_weight, grad_bias) if weight_grad else None

    def mlp_gelu_tanh_forward(self, inputs):
        pre = inputs.state["pre"] = F.linear(inputs.input, inputs.w1 * inputs.mask1, inputs.b1)
        act = inputs.state["act"] = F.gelu(pre, approximate="tanh")
        return F.linear(act, inputs.w2 * inputs.mask2, inputs.b2)

    def mlp_gelu_tanh_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_w1, grad_b1, grad_w2, grad_b2) or None), layer by layer with ATen."""
        s = inputs.state
        grad_act = grad_output.mm(inputs.w2 * inputs.mask2)
        grad_pre = torch.ops.aten.gelu_backward(grad_act, s["pre"], approximate="tanh")
        grad_input = grad_pre.mm(inputs.w1 * inputs.mask1) if input_grad else None
        if not weight_grad:
            return grad_input, None
        grad_w2 = grad_output.t().mm(s["act"]) * inputs.mask2
        grad_w1 = grad_pre.t().mm(inputs.input) * inputs.mask1
        grad_b1 = grad_pre.sum(0) if inputs.b1 is not None else None
        grad_b2 = grad_output.sum(0) if inputs.b2 is not None else None
        return grad_input, (grad_w1, grad_b1, grad_w2, grad_b2)

    def conv2d_forward(self, inputs):
        return dense_conv2d(inputs.input, _masked_weight(inputs), inputs.bias, inputs.stride, inputs.padding,
                            inputs.dilation)

    def conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        if is_pointwise(inputs.input, inputs.weight, inputs.stride, inputs.padding):  # as the forward ran
            grad_input, grad_weight = pointwise_conv2d_grads(grad_output, inputs.input, _masked_weight(inputs),
                                                             input_grad, weight_grad)
            return grad_input, _masked_grad(inputs, grad_weight) if weight_grad else None
        # One fused call for both gradients, as autograd makes for nn.Conv2d.
        grad_input, grad_weight, _ = torch.ops.aten.convolution_backward.default(
            grad_output, inputs.input, _masked_weight(inputs), None, inputs.stride, inputs.padding,
            inputs.dilation, False, [0, 0], 1, [input_grad, weight_grad, False])
        return grad_input, _masked_grad(inputs, grad_weight) if weight_grad else None

    def group_norm_silu_forward(self, inputs):
        x = inputs.input
        n, c = x.shape[:2]
        normed, mean, rstd = torch.ops.aten.native_group_norm(x, inputs.weight, inputs.bias, n, c,
                                                              math.prod(x.shape[2:]), inputs.num_groups,
                                                              inputs.eps)
        inputs.state.update(normed=normed, mean=mean, rstd=rstd)
        return F.silu(normed)

    def group_norm_silu_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_weight, grad_bias) or None); None for a gradient not asked for."""
        x, s = inputs.input, inputs.state
        n, c = x.shape[:2]
        dz = torch.ops.aten.silu_backward(grad_output, s["normed"])
        grad_input, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            dz, x, s["mean"], s["rstd"], inputs.weight, n, c, math.prod(x.shape[2:]), inputs.num_groups,
            [input_grad, weight_grad and inputs.weight is not None, weight_grad and inputs.bias is not None])
        return grad_input if input_grad else None, (grad_weight, grad_bias) if weight_grad else None

    def gelu_tanh_forward(self, inputs):
        return F.gelu(inputs.input, approximate="tanh")

    def gelu_tanh_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, None): an activation has no weight."""
        return torch.ops.aten.gelu_backward(grad_output, inputs.input, approximate="tanh") if input_grad else None, None

    def layer_norm_modulate_forward(self, inputs):
        x = inputs.input
        normed, mean, rstd = torch.ops.aten.native_layer_norm(x, x.shape[-1:], None, None, inputs.eps)
        inputs.state.update(normed=normed, mean=mean, rstd=rstd)
        return torch.addcmul(inputs.shift.unsqueeze(1), normed, 1 + inputs.scale.unsqueeze(1))

    def layer_norm_modulate_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_shift, grad_scale) or None); None for a gradient not asked for."""
        x, s = inputs.input, inputs.state
        grad_input = None
        if input_grad:
            grad_normed = grad_output * (1 + inputs.scale.unsqueeze(1))
            grad_input = torch.ops.aten.native_layer_norm_backward(grad_normed, x, x.shape[-1:], s["mean"], s["rstd"],
                                                                   None, None, [True, False, False])[0]
        grads = (grad_output.sum(1), (grad_output * s["normed"]).sum(1)) if weight_grad else None
        return grad_input, grads

    def gated_residual_forward(self, inputs):
        return torch.addcmul(inputs.input, inputs.gate.unsqueeze(1), inputs.branch)

    def gated_residual_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_branch, grad_gate), None for one not asked for (the input's gradient is grad_output)."""
        grad_branch = grad_output * inputs.gate.unsqueeze(1) if input_grad else None
        grad_gate = (grad_output * inputs.branch).sum(1) if weight_grad else None
        return grad_branch, grad_gate

    def residual_norm_modulate_forward(self, inputs):
        """(out, y): the gated add, then the norm and modulation as `layer_norm_modulate` runs them."""
        out = torch.addcmul(inputs.input, inputs.gate.unsqueeze(1), inputs.branch)
        normed, mean, rstd = torch.ops.aten.native_layer_norm(out, out.shape[-1:], None, None, inputs.eps)
        inputs.state.update(out=out, normed=normed, mean=mean, rstd=rstd)
        return out, torch.addcmul(inputs.shift.unsqueeze(1), normed, 1 + inputs.scale.unsqueeze(1))

    def residual_norm_modulate_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_gate, grad_branch, grad_shift, grad_scale)) from (grad_out or None, grad_y)."""
        grad_out, grad_y = grad_output
        s = inputs.state
        grad_normed = grad_y * (1 + inputs.scale.unsqueeze(1))
        grad = torch.ops.aten.native_layer_norm_backward(grad_normed, s["out"], s["out"].shape[-1:], s["mean"],
                                                         s["rstd"], None, None, [True, False, False])[0]
        if grad_out is not None:
            grad = grad + grad_out
        return grad, ((grad * inputs.branch).sum(1), grad * inputs.gate.unsqueeze(1), grad_y.sum(1),
                      (grad_y * s["normed"]).sum(1))

    def dropout_forward(self, inputs):
        """ATen's dropout (its Bernoulli mask divided by 1 - p, times the input) on a generator
        seeded with the call's seed, so it draws from torch's generator exactly as native does."""
        x, p = inputs.input, inputs.p
        generator = torch.Generator(x.device).manual_seed(inputs.seed)
        scaled = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator).mul_(0.0 if p == 1.0 else 1.0 / (1.0 - p))
        inputs.state["scaled_mask"] = scaled
        return x * scaled

    def dropout_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, None): grad_output times the forward's scaled mask."""
        return grad_output * inputs.state["scaled_mask"] if input_grad else None, None

    def qkv_attention_forward(self, inputs):
        """SDPA on the unbound q, k, v (differentiated by autograd: the op's eager dense path)."""
        return qkv_sdpa(inputs.qkv, inputs.num_heads, inputs.scale)

    def block_attention_forward(self, inputs):
        """(out, lse) as the kernel backends return them (lse = -inf on a row with no kept key); the
        custom op's dense path (the eager one differentiates `masked_sdpa` directly)."""
        from ebsparse.formats.block_layout import dense_mask

        q, k = inputs.query, inputs.key
        n = q.shape[-2]
        out = masked_sdpa(inputs)
        mask = dense_mask(inputs.layout.to(inputs.device), n, n, inputs.block_size).unsqueeze(0)
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * inputs.scale
        return out, scores.masked_fill(~mask, float("-inf")).logsumexp(-1)

    def block_attention_backward(self, inputs, grad_out, out, lse):
        """(dq, dk, dv) from the saved lse, the softmax backward written out (a custom op's kernel
        runs below autograd, so it cannot differentiate `masked_sdpa` again): P = exp(S - lse),
        dV = P^T dO, dS = P (dO V^T - rowsum(dO o O)), dQ = scale dS K, dK = scale dS^T Q."""
        from ebsparse.formats.block_layout import dense_mask

        q, k, v = inputs.query, inputs.key, inputs.value
        n = q.shape[-2]
        mask = dense_mask(inputs.layout.to(inputs.device), n, n, inputs.block_size).unsqueeze(0)
        q, k, v, go, o = (t.to(lse.dtype) for t in (q, k, v, grad_out, out))
        live_lse = lse.masked_fill(torch.isneginf(lse), float("inf"))  # no kept key: P = 0
        scores = (torch.matmul(q, k.transpose(-1, -2)) * inputs.scale).masked_fill(~mask, float("-inf"))
        p = torch.exp(scores - live_lse.unsqueeze(-1))
        ds = p * (torch.matmul(go, v.transpose(-1, -2)) - (go * o).sum(-1, keepdim=True))
        grads = (torch.matmul(ds, k) * inputs.scale, torch.matmul(ds.transpose(-1, -2), q) * inputs.scale,
                 torch.matmul(p.transpose(-1, -2), go))
        return tuple(g.to(inputs.dtype) for g in grads)

    # A block mask is a mask: the same masked dense kernels run it.
    block_linear_forward, block_linear_backward = linear_forward, linear_backward
    block_conv2d_forward, block_conv2d_backward = conv2d_forward, conv2d_backward

    def prune_2_4(self, rows):
        return magnitude_2_4_rows(rows)

    def compress_2_4(self, rows, mask_rows):
        return pack_2_4_rows(rows, mask_rows)

    def decompress_2_4(self, values, meta):
        return unpack_2_4_rows(values, meta)
