"""The native backend: ebsparse's own C++ CPU kernels (csrc/) and CUDA kernels (kernels/).

The kernel ops (`torch.ops.ebsparse.csr_*`, 2:4) have no fake kernels: under torch.compile they run
only inside the opaque public ops (`ebsparse::sparse_linear`, ...), whose fake kernels stand for
them, and the 2:4 ops run the dense backend while tracing.
"""

from __future__ import annotations

import torch

from ebsparse.backends.base import Backend
from ebsparse.backends.extension import extension_error

_NATIVE_DTYPES = (torch.float32, torch.float64)
_CUDA_HALF_DTYPES = (torch.float16, torch.bfloat16)
_OP_SCHEMA = {"linear": "ebsparse::csr_linear", "conv2d": "ebsparse::csr_conv2d",
              "prune_2_4": "ebsparse::prune_2_4", "compress_2_4": "ebsparse::compress_2_4",
              "decompress_2_4": "ebsparse::decompress_2_4", "group_norm_silu": "ebsparse::fused_group_norm_silu",
              "block_attention": "ebsparse::block_attention", "block_linear": "ebsparse::bsr_linear",
              "block_conv2d": "ebsparse::bsr_conv2d", "gru_recurrence": "ebsparse::gru_recurrence",
              "gelu_tanh": "ebsparse::gelu_tanh", "dropout": "ebsparse::dropout",
              "layer_norm_modulate": "ebsparse::layer_norm_modulate", "gated_residual": "ebsparse::gated_residual",
              "residual_norm_modulate": "ebsparse::residual_norm_modulate",
              "qkv_attention": "ebsparse::qkv_attention",
              "linear_gelu_tanh": "ebsparse::csr_linear_gelu_tanh", "mlp_gelu_tanh": "ebsparse::csr_mlp_gelu_tanh"}
_TWO_FOUR = ("prune_2_4", "compress_2_4", "decompress_2_4")


def _readable_once(grad_output: torch.Tensor) -> torch.Tensor:
    """grad_output in a layout both conv gradient kernels read without copying it again, made once
    for the two. An expanded gradient (what `y.sum()` hands back: one value, all strides 0) becomes
    one (H, W) plane repeated over images and channels, which the kernels read in place; so does a
    float32 one whose (H, W) planes are contiguous at any image and channel stride (the gradient of a
    channel slice, e.g. a U-Net skip connection's share of a concatenation); anything else is made
    contiguous."""
    if grad_output.numel() and not any(grad_output.stride()):
        return grad_output[0, 0].contiguous().expand(grad_output.shape)
    if grad_output.dtype == torch.float32 and grad_output.dim() == 4:
        _, _, h, w = grad_output.shape
        if (grad_output.stride(3) == 1 or w <= 1) and (grad_output.stride(2) == w or h <= 1):
            return grad_output
    return grad_output.contiguous()


class NativeBackend(Backend):
    name = "native"
    ops = frozenset(_OP_SCHEMA)

    def unavailable_reasons(self, op, device, dtype):
        reasons = super().unavailable_reasons(op, device, dtype)
        error = extension_error()
        if error is not None:
            return reasons + [error]
        # The CUDA linear kernels also take float16/bfloat16 (fp32 accumulation); the CPU ones do not.
        cuda_half = torch.device(device).type == "cuda" and op == "linear" and dtype in _CUDA_HALF_DTYPES
        if dtype not in _NATIVE_DTYPES and op not in _TWO_FOUR and not cuda_half:
            reasons.append(f"dtype {dtype} not supported (float32, float64; float16/bfloat16 for linear on CUDA)")
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
        if key is None:
            reasons.append(f"no kernels for device type {torch.device(device).type}")
        elif op in _OP_SCHEMA and not torch._C._dispatch_has_kernel_for_dispatch_key(_OP_SCHEMA[op], key):
            reasons.append(f"the extension was built without {key} kernels for {op}")
        return reasons

    def block_attention_forward(self, inputs):
        return torch.ops.ebsparse.block_attention(inputs.query, inputs.key, inputs.value, inputs.crow, inputs.col,
                                                  inputs.block_size, inputs.scale)

    def block_attention_backward(self, inputs, grad_out, out, lse):
        return torch.ops.ebsparse.block_attention_backward(grad_out, inputs.query, inputs.key, inputs.value, out, lse,
                                                           inputs.crow, inputs.col, inputs.block_size, inputs.scale)

    def linear_forward(self, inputs):
        p = inputs.pattern
        return torch.ops.ebsparse.csr_linear(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx)

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        p = inputs.pattern
        if grad_output.device.type == "cpu":  # one fused kernel shares the transposed grad_output
            # The bias gradient comes from the same panels (dy is not read again); the op takes it
            # from `state` (LinearInputs).
            bias_grad = weight_grad and inputs.bias is not None and inputs.bias.requires_grad
            grad_input, grad_weight, grad_bias = torch.ops.ebsparse.csr_linear_backward(
                grad_output, inputs.input, inputs.weight, p.row_ptr, p.col_idx, input_grad, weight_grad, bias_grad)
            if bias_grad:
                inputs.state["grad_bias"] = grad_bias
            return grad_input if input_grad else None, grad_weight if weight_grad else None
        grad_input = grad_weight = None
        if input_grad:
            grad_input = torch.ops.ebsparse.csr_linear_grad_input(grad_output, inputs.weight, p.col_ptr, p.row_idx)
        if weight_grad:
            grad_weight = torch.ops.ebsparse.csr_linear_grad_weight(grad_output, inputs.input, p.row_ptr, p.col_idx)
        return grad_input, grad_weight

    def linear_gelu_tanh_forward(self, inputs):
        p = inputs.pattern
        act, inputs.state["pre"] = torch.ops.ebsparse.csr_linear_gelu_tanh(inputs.input, inputs.weight, inputs.bias,
                                                                           p.row_ptr, p.col_idx)
        return act

    def linear_gelu_tanh_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_weight, grad_bias) or None), from one pass over grad_output and the
        saved pre-activation (the GELU's gradient formed in the kernel's panels)."""
        p = inputs.pattern
        has_bias = inputs.bias is not None
        grad_input, grad_weight, grad_bias = torch.ops.ebsparse.csr_linear_gelu_tanh_backward(
            grad_output, inputs.state["pre"], inputs.input, inputs.weight, p.row_ptr, p.col_idx, input_grad,
            weight_grad, weight_grad and has_bias)
        weight_grads = (grad_weight, grad_bias if has_bias else None)
        return grad_input if input_grad else None, weight_grads if weight_grad else None

    def mlp_gelu_tanh_forward(self, inputs):
        p1, p2 = inputs.pattern1, inputs.pattern2
        out, inputs.state["pre_panels"] = torch.ops.ebsparse.csr_mlp_gelu_tanh(
            inputs.input, inputs.w1, inputs.b1, p1.row_ptr, p1.col_idx, inputs.w2, inputs.b2, p2.row_ptr, p2.col_idx)
        return out

    def mlp_gelu_tanh_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_w1, grad_b1, grad_w2, grad_b2) or None), one pass over the batch for
        both layers (the GELU's gradient formed between them in the kernels' panels)."""
        p1, p2 = inputs.pattern1, inputs.pattern2
        has_b1, has_b2 = inputs.b1 is not None, inputs.b2 is not None
        grad_input, gw1, gb1, gw2, gb2 = torch.ops.ebsparse.csr_mlp_gelu_tanh_backward(
            grad_output, inputs.state["pre_panels"], inputs.input, inputs.w1, p1.row_ptr, p1.col_idx, inputs.w2,
            p2.row_ptr, p2.col_idx, input_grad, weight_grad, weight_grad and has_b1, weight_grad and has_b2)
        weight_grads = (gw1, gb1 if has_b1 else None, gw2, gb2 if has_b2 else None)
        return grad_input if input_grad else None, weight_grads if weight_grad else None

    def conv2d_forward(self, inputs):
        p = inputs.pattern
        return torch.ops.ebsparse.csr_conv2d(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx,
                                             inputs.stride, inputs.padding, inputs.dilation)

    def conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        p, geometry = inputs.pattern, (inputs.stride, inputs.padding, inputs.dilation)
        grad_output = _readable_once(grad_output)
        grad_input = grad_weight = None
        if input_grad:
            grad_input = torch.ops.ebsparse.csr_conv2d_grad_input(grad_output, inputs.weight, p.col_ptr, p.row_idx,
                                                                  list(inputs.input.shape), *geometry)
        if weight_grad and inputs.bias is not None and inputs.bias.requires_grad:
            # The bias gradient from the weight gradient's pass over grad_output (dy is not read
            # again); the op takes it from `state` (Conv2dInputs).
            grad_weight, inputs.state["grad_bias"] = torch.ops.ebsparse.csr_conv2d_grad_weight_bias(
                grad_output, inputs.input, p.row_ptr, p.col_idx, list(inputs.weight.shape), *geometry)
        elif weight_grad:
            grad_weight = torch.ops.ebsparse.csr_conv2d_grad_weight(grad_output, inputs.input, p.row_ptr, p.col_idx,
                                                                    list(inputs.weight.shape), *geometry)
        return grad_input, grad_weight

    def group_norm_silu_forward(self, inputs):
        y, mean, rstd = torch.ops.ebsparse.fused_group_norm_silu(inputs.input, inputs.num_groups, inputs.weight,
                                                                 inputs.bias, inputs.eps)
        inputs.state.update(mean=mean, rstd=rstd)
        return y

    def group_norm_silu_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_weight, grad_bias) or None), one fused pass (csrc/cpu/norm/)."""
        s = inputs.state
        grad_input, grad_weight, grad_bias = torch.ops.ebsparse.fused_group_norm_silu_backward(
            grad_output, inputs.input, s["mean"], s["rstd"], inputs.num_groups, inputs.weight, inputs.bias)
        weight_grads = (grad_weight if inputs.weight is not None else None,
                        grad_bias if inputs.bias is not None else None)
        return grad_input if input_grad else None, weight_grads if weight_grad else None

    def qkv_attention_forward(self, inputs):
        """(out (B, N, H * D), saved for the backward: (lse (B, H, N), probs)); probs is P (B, H, N, N)
        where the kernel keeps it for a backward (`inputs.save_probs`), else empty."""
        out, lse, probs = torch.ops.ebsparse.qkv_attention(inputs.qkv, inputs.num_heads, inputs.scale,
                                                           inputs.save_probs)
        return out, (lse, probs)

    def qkv_attention_backward(self, inputs, grad_out, saved):
        """d(qkv), in qkv's fused layout; `saved` is the forward's (lse, probs)."""
        lse, probs = saved
        return torch.ops.ebsparse.qkv_attention_backward(grad_out, inputs.qkv, lse, probs, inputs.num_heads,
                                                         inputs.scale)

    def gelu_tanh_forward(self, inputs):
        return torch.ops.ebsparse.gelu_tanh(inputs.input)

    def gelu_tanh_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, None): an activation has no weight."""
        return torch.ops.ebsparse.gelu_tanh_backward(grad_output, inputs.input) if input_grad else None, None

    def layer_norm_modulate_forward(self, inputs):
        y, mean, rstd = torch.ops.ebsparse.layer_norm_modulate(inputs.input, inputs.shift, inputs.scale, inputs.eps)
        inputs.state.update(mean=mean, rstd=rstd)
        return y

    def layer_norm_modulate_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_shift, grad_scale) or None), one fused pass (csrc/cpu/adaln/) that
        makes all three whichever are asked for."""
        s = inputs.state
        grad_input, grad_shift, grad_scale = torch.ops.ebsparse.layer_norm_modulate_backward(
            grad_output, inputs.input, s["mean"], s["rstd"], inputs.scale)
        return grad_input if input_grad else None, (grad_shift, grad_scale) if weight_grad else None

    def gated_residual_forward(self, inputs):
        return torch.ops.ebsparse.gated_residual(inputs.input, inputs.gate, inputs.branch)

    def gated_residual_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_branch, grad_gate), one fused pass making both (the input's gradient is grad_output)."""
        grad_branch, grad_gate = torch.ops.ebsparse.gated_residual_backward(grad_output, inputs.gate, inputs.branch)
        return grad_branch if input_grad else None, grad_gate if weight_grad else None

    def residual_norm_modulate_forward(self, inputs):
        """(out, y), one pass (csrc/cpu/adaln/)."""
        out, y, mean, rstd = torch.ops.ebsparse.residual_norm_modulate(inputs.input, inputs.gate, inputs.branch,
                                                                       inputs.shift, inputs.scale, inputs.eps)
        inputs.state.update(out=out, mean=mean, rstd=rstd)
        return out, y

    def residual_norm_modulate_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, (grad_gate, grad_branch, grad_shift, grad_scale)), all in one pass from
        grad_output = (grad_out or None, grad_y)."""
        s = inputs.state
        grad_input, *grads = torch.ops.ebsparse.residual_norm_modulate_backward(
            *grad_output, s["out"], s["mean"], s["rstd"], inputs.scale, inputs.gate, inputs.branch)
        return grad_input, tuple(grads)

    def dropout_forward(self, inputs):
        y, inputs.state["mask"] = torch.ops.ebsparse.dropout(inputs.input, inputs.p, inputs.seed)
        return y

    def dropout_backward(self, inputs, grad_output, input_grad, weight_grad):
        """(grad_input, None) from the forward's bit mask."""
        return torch.ops.ebsparse.dropout_backward(grad_output, inputs.state["mask"], inputs.p) if input_grad else None, None

    def block_linear_forward(self, inputs):
        p = inputs.pattern
        return torch.ops.ebsparse.bsr_linear(inputs.input, inputs.weight, inputs.bias, p.brow_ptr, p.bcol_idx,
                                             *p.block)

    def block_linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        p = inputs.pattern
        grad_input, grad_weight = torch.ops.ebsparse.bsr_linear_backward(
            grad_output, inputs.input, inputs.weight, *p.tensors(), *p.block, input_grad, weight_grad)
        return grad_input if input_grad else None, grad_weight if weight_grad else None

    def block_conv2d_forward(self, inputs):
        p = inputs.pattern
        return torch.ops.ebsparse.bsr_conv2d(inputs.input, inputs.weight, inputs.bias, p.brow_ptr, p.bcol_idx,
                                             *p.block, inputs.stride, inputs.padding, inputs.dilation)

    def block_conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        p = inputs.pattern
        # The bias gradient from the weight gradient's pass over grad_output; the op takes it from
        # `state` (BlockConv2dInputs).
        bias_grad = weight_grad and inputs.bias is not None and inputs.bias.requires_grad
        grad_input, grad_weight, grad_bias = torch.ops.ebsparse.bsr_conv2d_backward(
            grad_output, inputs.input, inputs.weight, *p.tensors(), *p.block, inputs.stride, inputs.padding,
            inputs.dilation, input_grad, weight_grad, bias_grad)
        if bias_grad:
            inputs.state["grad_bias"] = grad_bias
        return grad_input if input_grad else None, grad_weight if weight_grad else None

    def prune_2_4(self, rows):
        return torch.ops.ebsparse.prune_2_4(rows)

    def compress_2_4(self, rows, mask_rows):
        return torch.ops.ebsparse.compress_2_4(rows.contiguous(), mask_rows.contiguous())

    def decompress_2_4(self, values, meta):
        return torch.ops.ebsparse.decompress_2_4(values, meta)
