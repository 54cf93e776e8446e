"""The Triton backend: the kernels in ebsparse/triton (on CUDA, or on the CPU under
TRITON_INTERPRET=1, which is for testing only).

A linear or conv layer whose mask is 2:4 along the input dimension runs the tensor-core kernels
(`twofour_linear_kernels`, `twofour_conv2d_kernels`: tiled `tl.dot`, implicit GEMM for conv, fp32
accumulation, float32/bfloat16/float16), the pattern's metadata built once per mask version; any
other mask, and float64, run the CSR gather kernels (CUDA cores; the reference class).
"""

from __future__ import annotations

import weakref

import torch

from ebsparse.backends.base import Backend
from ebsparse.formats.index import tensor_version
from ebsparse.formats.twofour import is_2_4_mask, pack_2_4_rows, rows_view

_TENSOR_CORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT_DTYPES = _TENSOR_CORE_DTYPES + (torch.float64,)
# id(mask) -> (weak ref to the mask, its version, meta (M, K/4) uint8 or None when not 2:4); an entry
# goes with its mask. (Not a WeakKeyDictionary: it compares colliding keys with tensor ==.)
_meta_cache: dict[int, tuple[weakref.ref, int, torch.Tensor | None]] = {}


def two_four_meta(inputs) -> torch.Tensor | None:
    """The 2:4 metadata of a linear or conv call's mask (its kept positions, `pack_2_4_rows`; conv:
    (Co, KH*KW*Ci/4) with input channels last), or None when the mask is not 2:4 or the dtype has
    no tensor-core kernel; cached per mask version."""
    if inputs.dtype not in _TENSOR_CORE_DTYPES:
        return None
    mask = inputs.mask
    version = tensor_version(mask)  # None (an inference mask): rebuilt on every call
    cached = _meta_cache.get(id(mask))
    if cached is not None and version is not None and cached[0]() is mask and cached[1] == version:
        return cached[2]
    meta = None
    if is_2_4_mask(mask):
        rows = rows_view(mask)  # conv: (Co*KH*KW, Ci), i.e. (Co, KH*KW*Ci) with channels last
        meta = pack_2_4_rows(rows, rows)[1].reshape(mask.shape[0], -1)
    key = id(mask)
    if version is not None:
        _meta_cache[key] = (weakref.ref(mask, lambda _, key=key: _meta_cache.pop(key, None)), version, meta)
    return meta


def _kernels():
    from ebsparse import triton as kernels  # imported on first use: triton is slow to import

    return kernels


def _block():
    from ebsparse.triton import block_ops  # the block kernels (tl.dot per block)

    return block_ops


class TritonBackend(Backend):
    name = "triton"
    ops = frozenset({"linear", "conv2d", "block_linear", "block_conv2d", "compress_2_4", "decompress_2_4",
                     "block_attention"})

    def unavailable_reasons(self, op, device, dtype):
        reasons = super().unavailable_reasons(op, device, dtype)
        try:
            kernels = _kernels()
        except ImportError as exc:
            return reasons + [f"ebsparse.triton not importable ({exc})"]
        reasons += list(kernels.unavailable_reasons(torch.device(device)))
        if op in ("linear", "conv2d") and dtype not in _FLOAT_DTYPES:
            reasons.append(f"dtype {dtype} not supported (float32, float64, float16, bfloat16)")
        if op in ("block_linear", "block_conv2d") and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            reasons.append(f"dtype {dtype} not supported (float32, float16, bfloat16: tl.dot)")
        return reasons

    def block_attention_forward(self, inputs):
        return _kernels().block_attention(inputs.query, inputs.key, inputs.value, inputs.crow, inputs.col,
                                          inputs.block_size, inputs.scale)

    def block_attention_backward(self, inputs, grad_out, out, lse):
        return _kernels().block_attention_backward(grad_out, inputs.query, inputs.key, inputs.value, out, lse,
                                                   inputs.crow, inputs.col, inputs.block_size, inputs.scale)

    def linear_forward(self, inputs):
        p, meta = inputs.pattern, two_four_meta(inputs)
        if meta is not None:
            return _kernels().twofour_linear(inputs.input, inputs.weight, meta, inputs.bias)
        return _kernels().csr_linear(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx)

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        p, kernels, meta = inputs.pattern, _kernels(), two_four_meta(inputs)
        if meta is not None:
            return (kernels.twofour_linear_grad_input(grad_output, inputs.weight, meta) if input_grad else None,
                    kernels.twofour_linear_grad_weight(grad_output, inputs.input, meta) if weight_grad else None)
        grad_input = kernels.csr_linear_grad_input(grad_output, inputs.weight, p.col_ptr, p.row_idx) \
            if input_grad else None
        grad_weight = kernels.csr_linear_grad_weight(grad_output, inputs.input, p.row_ptr, p.col_idx) \
            if weight_grad else None
        return grad_input, grad_weight

    def conv2d_forward(self, inputs):
        p, meta = inputs.pattern, two_four_meta(inputs)
        if meta is not None:
            return _kernels().twofour_conv2d(inputs.input, inputs.weight, meta, inputs.bias, inputs.stride,
                                             inputs.padding, inputs.dilation)
        return _kernels().csr_conv2d(inputs.input, inputs.weight, inputs.bias, p.row_ptr, p.col_idx, inputs.stride,
                                     inputs.padding, inputs.dilation)

    def conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        p, kernels, meta = inputs.pattern, _kernels(), two_four_meta(inputs)
        geometry = (inputs.stride, inputs.padding, inputs.dilation)
        if meta is not None:
            return (kernels.twofour_conv2d_grad_input(grad_output, inputs.weight, meta, list(inputs.input.shape),
                                                      *geometry) if input_grad else None,
                    kernels.twofour_conv2d_grad_weight(grad_output, inputs.input, meta, list(inputs.weight.shape),
                                                       *geometry) if weight_grad else None)
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
