"""The Triton backend: the kernels in ebsparse/triton (on CUDA, or on the CPU under
TRITON_INTERPRET=1, which is for testing only)."""

from __future__ import annotations

import torch

from ebsparse.backends.base import Backend


def _kernels():
    from ebsparse import triton as kernels  # imported on first use: triton is slow to import

    return kernels


def _block():
    from ebsparse.triton import block_ops  # the block kernels (tl.dot per block)

    return block_ops


class TritonBackend(Backend):
    name = "triton"
    ops = frozenset({"linear", "conv2d", "block_linear", "block_conv2d", "compress_2_4", "decompress_2_4"})

    def unavailable_reasons(self, op, device, dtype):
        reasons = super().unavailable_reasons(op, device, dtype)
        try:
            kernels = _kernels()
        except ImportError as exc:
            return reasons + [f"ebsparse.triton not importable ({exc})"]
        reasons += list(kernels.unavailable_reasons(torch.device(device)))
        if op in ("linear", "conv2d") and dtype not in (torch.float32, torch.float64):
            reasons.append(f"dtype {dtype} not supported (float32, float64)")
        if op in ("block_linear", "block_conv2d") and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            reasons.append(f"dtype {dtype} not supported (float32, float16, bfloat16: tl.dot)")
        return reasons

    def linear_forward(self, inputs):
        p = inputs.pattern
        return _kernels().csr_linear(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx)

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        p, kernels = inputs.pattern, _kernels()
        grad_input = kernels.csr_linear_grad_input(grad_output, inputs.weight, p.col_ptr, p.row_idx) \
            if input_grad else None
        grad_weight = kernels.csr_linear_grad_weight(grad_output, inputs.input, p.row_ptr, p.col_idx) \
            if weight_grad else None
        return grad_input, grad_weight

    def conv2d_forward(self, inputs):
        p = inputs.pattern
        return _kernels().csr_conv2d(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx, inputs.stride,
                                     inputs.padding, inputs.dilation)

    def conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        p, kernels = inputs.pattern, _kernels()
        geometry = (inputs.stride, inputs.padding, inputs.dilation)
        grad_output = grad_output.contiguous()  # once for both kernels
        grad_input = grad_weight = None
        if input_grad:
            grad_input = kernels.csr_conv2d_grad_input(grad_output, inputs.weight, p.col_ptr, p.row_idx,
                                                       list(inputs.input.shape), *geometry)
        if weight_grad:
            grad_weight = kernels.csr_conv2d_grad_weight(grad_output, inputs.input, p.row_ptr, p.col_idx,
                                                         list(inputs.weight.shape), *geometry)
        return grad_input, grad_weight

    def block_linear_forward(self, inputs):
        p = inputs.pattern
        return _block().bsr_linear(inputs.input, inputs.weight, inputs.bias, p.brow_ptr, p.bcol_idx, *p.block)

    def block_linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        return _block().bsr_linear_backward(grad_output, inputs.input, inputs.weight, *inputs.pattern.tensors(),
                                            *inputs.pattern.block, input_grad, weight_grad)

    def block_conv2d_forward(self, inputs):
        p = inputs.pattern
        return _block().bsr_conv2d(inputs.input, inputs.weight, inputs.bias, p.brow_ptr, p.bcol_idx, *p.block,
                                   inputs.stride, inputs.padding, inputs.dilation)

    def block_conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        return _block().bsr_conv2d_backward(grad_output, inputs.input, inputs.weight, *inputs.pattern.tensors(),
                                            *inputs.pattern.block, inputs.stride, inputs.padding, inputs.dilation,
                                            input_grad, weight_grad)

    def compress_2_4(self, rows, mask_rows):
        return _kernels().compress_2_4(rows, mask_rows)

    def decompress_2_4(self, values, meta):
        return _kernels().decompress_2_4(values, meta)
