"""The native backend: ebsparse's own C++ CPU kernels (csrc/) and CUDA kernels (kernels/)."""

from __future__ import annotations

import torch

from ebsparse.ops.extension import extension_error
from ebsparse.ops.registry import Backend

_NATIVE_DTYPES = (torch.float32, torch.float64)
_OP_SCHEMA = {"linear": "ebsparse::csr_linear", "conv2d": "ebsparse::csr_conv2d"}


def _register_fakes() -> None:
    """Fake kernels so the native ops can be traced (torch.compile, opcheck); they read no data."""

    def out_size(size, k, s, p, d):
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    lib = "ebsparse::"
    torch.library.register_fake(lib + "csr_linear")(
        lambda input, weight, bias, row_ptr, col_idx: input.new_empty((input.shape[0], weight.shape[0])))
    torch.library.register_fake(lib + "csr_linear_grad_input")(
        lambda grad_output, weight, col_ptr, row_idx: grad_output.new_empty((grad_output.shape[0], weight.shape[1])))
    torch.library.register_fake(lib + "csr_linear_grad_weight")(
        lambda grad_output, input, row_ptr, col_idx: input.new_empty((grad_output.shape[1], input.shape[1])))

    def linear_backward_fake(grad_output, input, weight, row_ptr, col_idx, input_grad, weight_grad):
        return (grad_output.new_empty(tuple(input.shape) if input_grad else (0, 0)),
                grad_output.new_empty(tuple(weight.shape) if weight_grad else (0, 0)))

    torch.library.register_fake(lib + "csr_linear_backward")(linear_backward_fake)

    def conv_fake(input, weight, bias, row_ptr, col_idx, stride, padding, dilation):
        ho = out_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
        wo = out_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
        return input.new_empty((input.shape[0], weight.shape[0], ho, wo))

    torch.library.register_fake(lib + "csr_conv2d")(conv_fake)
    torch.library.register_fake(lib + "csr_conv2d_grad_input")(
        lambda grad_output, weight, col_ptr, row_idx, input_size, stride, padding, dilation:
        grad_output.new_empty(input_size))
    torch.library.register_fake(lib + "csr_conv2d_grad_weight")(
        lambda grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation:
        input.new_empty(weight_size))
    torch.library.register_fake(lib + "prune_2_4")(lambda weight: torch.empty_like(weight, dtype=torch.bool))

    def compress_fake(weight, mask):
        return (weight.new_empty((weight.shape[0], weight.shape[1] // 2)),
                weight.new_empty((weight.shape[0], weight.shape[1] // 4), dtype=torch.uint8))

    torch.library.register_fake(lib + "compress_2_4")(compress_fake)
    torch.library.register_fake(lib + "decompress_2_4")(
        lambda values, meta: values.new_empty((values.shape[0], 2 * values.shape[1])))


class NativeBackend(Backend):
    name = "native"
    ops = frozenset({"linear", "conv2d"})

    def __init__(self):
        if extension_error() is None:
            _register_fakes()

    def unavailable_reasons(self, op, device, dtype):
        reasons = super().unavailable_reasons(op, device, dtype)
        error = extension_error()
        if error is not None:
            return reasons + [error]
        if dtype not in _NATIVE_DTYPES:
            reasons.append(f"dtype {dtype} not supported (float32, float64)")
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
        if key is None:
            reasons.append(f"no kernels for device type {torch.device(device).type}")
        elif op in _OP_SCHEMA and not torch._C._dispatch_has_kernel_for_dispatch_key(_OP_SCHEMA[op], key):
            reasons.append(f"the extension was built without {key} kernels for {op}")
        return reasons

    def linear_forward(self, input, weight, bias, mask, index):
        return torch.ops.ebsparse.csr_linear(input, weight, bias, index[0], index[1])

    def linear_grad_input(self, grad_output, weight, mask, index):
        return torch.ops.ebsparse.csr_linear_grad_input(grad_output, weight, index[2], index[3])

    def linear_grad_weight(self, grad_output, input, mask, index):
        return torch.ops.ebsparse.csr_linear_grad_weight(grad_output, input, index[0], index[1])

    def linear_backward(self, grad_output, input, weight, mask, index):
        if grad_output.device.type != "cpu":  # the fused kernel is CPU-only
            return super().linear_backward(grad_output, input, weight, mask, index)
        return torch.ops.ebsparse.csr_linear_backward(grad_output, input, weight, index[0], index[1], True, True)

    def conv2d_forward(self, input, weight, bias, mask, index, stride, padding, dilation):
        return torch.ops.ebsparse.csr_conv2d(input, weight, bias, index[0], index[1], stride, padding, dilation)

    def conv2d_grad_input(self, grad_output, weight, mask, index, input_size, stride, padding, dilation):
        return torch.ops.ebsparse.csr_conv2d_grad_input(grad_output, weight, index[2], index[3], input_size,
                                                        stride, padding, dilation)

    def conv2d_grad_weight(self, grad_output, input, mask, index, weight_size, stride, padding, dilation):
        return torch.ops.ebsparse.csr_conv2d_grad_weight(grad_output, input, index[0], index[1], weight_size,
                                                         stride, padding, dilation)
