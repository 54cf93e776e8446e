"""The semi-structured backend: 2:4 layers on sparse tensor cores through what torch ships
(`torch.sparse.to_sparse_semi_structured`: cuSPARSELt, or CUTLASS when
`SparseSemiStructuredTensor._FORCE_CUTLASS`), bfloat16 and float16 on CUDA GPUs of compute
capability 8.0 and newer.

One training step of a layer whose mask is 2:4 along the input dimension:
- forward: the masked weight compressed (values + metadata) and multiplied on sparse tensor cores;
- grad-input: dY . W is a GEMM with W^T as the sparse operand, so it runs sparse only when W^T is
  2:4 too, i.e. the mask is transposable (`ebsparse.formats.transposable`); otherwise dense;
- grad-weight: dense dY^T . X, then masked; for linear layers where Triton runs, one tensor-core
  kernel with the masking in its epilogue (`ebsparse.triton.twofour_linear_grad_weight`).

Convolutions run as implicit GEMMs over channels-last rows: a 1x1 stride-1 conv is the GEMM of the
(N*H*W, Ci) pixels; any other conv unfolds its input (im2col) into (N*Ho*Wo, KH*KW*Ci) rows with
input channels last, so the weight as (Co, KH*KW*Ci) keeps the pattern's 2:4 groups along input
channels, and folds grad-input back. The output is channels-last.

The host logic (is the mask 2:4, transposable, do the shapes meet the kernel's multiples, the GEMM
layouts) runs without a GPU: a backend made with another `to_sparse` (tests use the identity) runs
every step on the CPU with dense GEMMs.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from ebsparse.backends.base import Backend
from ebsparse.formats.index import tensor_version, zero_dropped
from ebsparse.formats.transposable import is_transposable_2_4
from ebsparse.formats.twofour import is_2_4_mask

DTYPES = (torch.float16, torch.bfloat16)


def _sparse_class():
    from torch.sparse import SparseSemiStructuredTensor

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        return torch.sparse.SparseSemiStructuredTensorCUTLASS
    return torch.sparse.SparseSemiStructuredTensorCUSPARSELT


def operand_reasons(rows: int, cols: int, dtype: torch.dtype, what: str) -> list[str]:
    """Why a (rows, cols) sparse operand cannot be compressed by torch's semi-structured class in
    use (both dimensions multiples of its minimums); empty when it can."""
    try:
        constraints = _sparse_class()._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    except (ImportError, AttributeError) as exc:
        return [f"torch.sparse semi-structured tensors unavailable ({exc})"]
    if constraints is None:
        return [f"dtype {dtype} not supported by {_sparse_class().__name__}"]
    r, c = constraints.sparse_min_rows, constraints.sparse_min_cols
    if rows < r or rows % r or cols < c or cols % c:
        return [f"{what} ({rows}, {cols}) must be multiples of ({r}, {c}) for {_sparse_class().__name__}"]
    return []


class _Plan:
    """What a call's mask and shapes allow, checked once per mask version."""

    def __init__(self, reasons: list[str], transposable: bool):
        self.reasons, self.transposable = reasons, transposable


class SemiStructuredBackend(Backend):
    name = "semi_structured"
    ops = frozenset({"linear", "conv2d"})

    def __init__(self, to_sparse=None, device_check: bool = True):
        # `to_sparse` turns a dense (rows, cols) masked operand into what F.linear multiplies;
        # `device_check=False` lets the host logic run on the CPU (tests).
        self._to_sparse = to_sparse
        self._device_check = device_check
        self._plans: dict[tuple, tuple] = {}

    def unavailable_reasons(self, op, device, dtype):
        reasons = super().unavailable_reasons(op, device, dtype)
        device = torch.device(device)
        if not hasattr(torch.sparse, "to_sparse_semi_structured"):
            reasons.append("this torch has no torch.sparse.to_sparse_semi_structured")
        if self._device_check:
            if device.type != "cuda":
                reasons.append(f"sparse tensor cores need a CUDA device, got {device.type}")
            elif not torch.cuda.is_available():
                reasons.append("device is CUDA but torch.cuda.is_available() is False")
            elif torch.cuda.get_device_capability(device) < (8, 0):
                reasons.append(f"sparse tensor cores need compute capability >= 8.0, got "
                               f"{torch.cuda.get_device_capability(device)}")
        if dtype not in DTYPES:
            reasons.append(f"dtype {dtype} not supported (float16, bfloat16)")
        return reasons

    # ---- host logic ------------------------------------------------------------------------------

    def plan(self, inputs) -> _Plan:
        """The checks of a call, cached per (mask, version, weight shape, dtype)."""
        mask = inputs.mask
        version = tensor_version(mask)  # None (an inference mask): planned on every call
        key = (id(mask), version, tuple(inputs.weight.shape), inputs.dtype)
        cached = self._plans.get(key)
        if cached is not None and version is not None and cached[0]() is mask:
            return cached[1]
        reasons = []
        if not is_2_4_mask(mask):
            reasons.append("mask: not 2:4 along the input dimension")
        rows, cols = _gemm_weight_shape(inputs.weight)
        reasons += operand_reasons(rows, cols, inputs.dtype, "weight as a GEMM operand (out, in)")
        transposable = not reasons and is_transposable_2_4(mask) and \
            not operand_reasons(cols, rows, inputs.dtype, "W^T")
        plan = _Plan(reasons, transposable)
        self._plans = {k: v for k, v in self._plans.items() if v[0]() is not None}
        if version is not None:
            self._plans[key] = (weakref.ref(mask), plan)
        return plan

    def _checked(self, inputs) -> _Plan:
        plan = self.plan(inputs)
        if plan.reasons:
            # NotImplementedError (a RuntimeError): auto drops this candidate quietly; a caller who
            # named the backend gets the reasons.
            raise NotImplementedError(f"backend 'semi_structured' cannot run this {inputs.op}: "
                                      + "; ".join(plan.reasons))
        return plan

    def _sparse(self, dense: torch.Tensor):
        to_sparse = self._to_sparse or torch.sparse.to_sparse_semi_structured
        return to_sparse(dense.contiguous())

    def _masked_rows(self, inputs) -> torch.Tensor:
        """The masked weight as the GEMM's (out, in) matrix, dropped entries exactly zero; made once
        per call and kept for the backward."""
        rows = inputs.state.get("semi_structured_rows")
        if rows is None:
            w = zero_dropped(inputs.weight, inputs.pattern.bits(inputs.mask, inputs.weight.dtype))
            rows = inputs.state["semi_structured_rows"] = _gemm_weight(w)
        return rows

    def _masked_grad(self, inputs, grad_weight):
        if not inputs.dense_weight_grad:
            bits = inputs.pattern.bits(inputs.mask, grad_weight.dtype)
            grad_weight.view(bits.dtype).bitwise_and_(bits)
        return grad_weight

    # ---- linear ----------------------------------------------------------------------------------

    def linear_forward(self, inputs):
        self._checked(inputs)
        # torch's semi-structured matmuls take contiguous dense operands
        return F.linear(inputs.input.contiguous(), self._sparse(self._masked_rows(inputs)), inputs.bias)

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        plan = self._checked(inputs)
        w = self._masked_rows(inputs)
        grad_output = grad_output.contiguous()
        grad_input = grad_weight = None
        if input_grad:
            grad_input = (F.linear(grad_output, self._sparse(w.t())) if plan.transposable
                          else grad_output.mm(w))
        if weight_grad:
            meta = None if inputs.dense_weight_grad else _triton_meta(inputs)
            if meta is not None:  # dense tensor-core GEMM with the masking fused in its epilogue
                grad_weight = _triton().twofour_linear_grad_weight(grad_output, inputs.input, meta)
            else:
                grad_weight = self._masked_grad(inputs, grad_output.t().mm(inputs.input))
        return grad_input, grad_weight

    # ---- conv2d as implicit GEMM -----------------------------------------------------------------

    def conv2d_forward(self, inputs):
        self._checked(inputs)
        cols = _im2col(inputs)
        n, co, ho, wo = inputs.output_shape()
        y = F.linear(cols, self._sparse(self._masked_rows(inputs)), inputs.bias)
        return y.reshape(n, ho, wo, co).permute(0, 3, 1, 2)

    def conv2d_backward(self, inputs, grad_output, input_grad, weight_grad):
        plan = self._checked(inputs)
        w = self._masked_rows(inputs)
        n, co, ho, wo = inputs.output_shape()
        dy = grad_output.permute(0, 2, 3, 1).reshape(n * ho * wo, co)
        grad_input = grad_weight = None
        if input_grad:
            dcols = F.linear(dy, self._sparse(w.t())) if plan.transposable else dy.mm(w)
            grad_input = _col2im(dcols, inputs)
        if weight_grad:
            co_, ci, kh, kw = inputs.weight.shape
            dw_rows = dy.t().mm(_im2col(inputs))
            grad_weight = self._masked_grad(inputs, dw_rows.reshape(co_, kh, kw, ci).permute(0, 3, 1, 2).contiguous())
        return grad_input, grad_weight


# ---- the Triton grad-weight ----------------------------------------------------------------------

def _triton():
    from ebsparse import triton

    return triton


def _triton_meta(inputs):
    """The 2:4 metadata for the Triton grad-weight kernel (masked epilogue: no separate masking pass
    over dW) where Triton runs here, else None (dense GEMM, then masked)."""
    from ebsparse.backends.triton_backend import two_four_meta

    try:
        if _triton().unavailable_reasons(inputs.device):
            return None
    except ImportError:
        return None
    return two_four_meta(inputs)


# ---- layouts -------------------------------------------------------------------------------------

def _gemm_weight_shape(weight: torch.Tensor) -> tuple[int, int]:
    if weight.dim() == 2:
        return tuple(weight.shape)
    co, ci, kh, kw = weight.shape
    return co, kh * kw * ci


def _gemm_weight(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) GEMM matrix of a linear weight, or (Co, KH*KW*Ci) of a conv weight with input
    channels last (2:4 groups stay consecutive)."""
    if weight.dim() == 2:
        return weight
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _pointwise(inputs) -> bool:
    kh, kw = inputs.weight.shape[2:]
    return (kh, kw) == (1, 1) and list(inputs.stride) == [1, 1] and list(inputs.padding) == [0, 0]


def _im2col(inputs) -> torch.Tensor:
    """(N*Ho*Wo, KH*KW*Ci) rows of the input, input channels last."""
    x = inputs.input
    n, ci = x.shape[:2]
    if _pointwise(inputs):
        return x.permute(0, 2, 3, 1).reshape(-1, ci)
    kh, kw = inputs.weight.shape[2:]
    cols = F.unfold(x, (kh, kw), dilation=inputs.dilation, padding=inputs.padding, stride=inputs.stride)
    taps, pixels = kh * kw, cols.shape[-1]
    return cols.reshape(n, ci, taps, pixels).permute(0, 3, 2, 1).reshape(n * pixels, taps * ci)


def _col2im(dcols: torch.Tensor, inputs) -> torch.Tensor:
    """Inverse layout of `_im2col`, overlapping taps summed (the grad-input of the unfold)."""
    n, ci, h, w = inputs.input.shape
    if _pointwise(inputs):
        return dcols.reshape(n, h, w, ci).permute(0, 3, 1, 2)
    kh, kw = inputs.weight.shape[2:]
    taps = kh * kw
    pixels = dcols.shape[0] // n
    cols = dcols.reshape(n, pixels, taps, ci).permute(0, 3, 2, 1).reshape(n, ci * taps, pixels)
    return F.fold(cols, (h, w), (kh, kw), dilation=inputs.dilation, padding=inputs.padding, stride=inputs.stride)
