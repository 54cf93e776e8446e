"""The Triton backend: sparse linear and conv2d kernels in ebsparse/triton (on CUDA, or on the CPU under
TRITON_INTERPRET=1, which is for testing only)."""

from __future__ import annotations

import torch

from ebsparse.ops.registry import Backend


class TritonBackend(Backend):
    name = "triton"
    ops = frozenset({"linear", "conv2d"})

    def unavailable_reasons(self, op, device, dtype):
        reasons = super().unavailable_reasons(op, device, dtype)
        try:
            from ebsparse import triton as kernels
        except ImportError as exc:
            return reasons + [f"ebsparse.triton not importable ({exc})"]
        reasons += list(kernels.unavailable_reasons(torch.device(device)))
        if dtype not in (torch.float32, torch.float64):
            reasons.append(f"dtype {dtype} not supported (float32, float64)")
        return reasons

    def linear_forward(self, input, weight, bias, mask, index):
        from ebsparse import triton as kernels

        return kernels.csr_linear(input, weight, bias, index[0], index[1])

    def linear_grad_input(self, grad_output, weight, mask, index):
        from ebsparse import triton as kernels

        return kernels.csr_linear_grad_input(grad_output, weight, index[2], index[3])

    def linear_grad_weight(self, grad_output, input, mask, index):
        from ebsparse import triton as kernels

        return kernels.csr_linear_grad_weight(grad_output, input, index[0], index[1])

    def conv2d_forward(self, input, weight, bias, mask, index, stride, padding, dilation):
        from ebsparse import triton as kernels

        return kernels.csr_conv2d(input, weight, bias, index[0], index[1], stride, padding, dilation)

    def conv2d_grad_input(self, grad_output, weight, mask, index, input_size, stride, padding, dilation):
        from ebsparse import triton as kernels

        return kernels.csr_conv2d_grad_input(grad_output, weight, index[2], index[3], input_size, stride, padding,
                                             dilation)

    def conv2d_grad_weight(self, grad_output, input, mask, index, weight_size, stride, padding, dilation):
        from ebsparse import triton as kernels

        return kernels.csr_conv2d_grad_weight(grad_output, input, index[0], index[1], weight_size, stride, padding,
                                              dilation)
