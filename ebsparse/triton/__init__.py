"""Triton kernels of the ebsparse ops, one file per op, each with a pure-PyTorch `*_reference`.

Every function has exactly the semantics of the C++ op of the same name (`torch.ops.ebsparse.*`,
see csrc/ebsparse.h). `unavailable_reasons(device)` says why the kernels cannot run on a device
(an empty list when they can); the kernels raise RuntimeError with those reasons rather than fall
back. Importing this package never fails, with or without triton.

On the CPU the kernels need the Triton interpreter: `TRITON_INTERPRET=1` set before the first
launch (slow; meant for tests).
"""

from ._common import unavailable_reasons
from .block_attention import block_attention, block_attention_backward
from .compress_2_4 import compress_2_4, compress_2_4_reference
from .csr_conv2d import csr_conv2d, csr_conv2d_reference
from .csr_conv2d_grad_input import csr_conv2d_grad_input, csr_conv2d_grad_input_reference
from .csr_conv2d_grad_weight import csr_conv2d_grad_weight, csr_conv2d_grad_weight_reference
from .csr_linear import csr_linear, csr_linear_reference
from .csr_linear_grad_input import csr_linear_grad_input, csr_linear_grad_input_reference
from .csr_linear_grad_weight import csr_linear_grad_weight, csr_linear_grad_weight_reference
from .decompress_2_4 import decompress_2_4, decompress_2_4_reference
from .twofour_conv2d_kernels import twofour_conv2d, twofour_conv2d_grad_input, twofour_conv2d_grad_weight
from .twofour_linear_kernels import (twofour_linear, twofour_linear_grad_input, twofour_linear_grad_input_reference,
                             twofour_linear_grad_weight, twofour_linear_grad_weight_reference,
                             twofour_linear_reference)

__all__ = [
    "unavailable_reasons",
    "block_attention",
    "block_attention_backward",
    "csr_linear",
    "csr_linear_reference",
    "csr_linear_grad_input",
    "csr_linear_grad_input_reference",
    "csr_linear_grad_weight",
    "csr_linear_grad_weight_reference",
    "csr_conv2d",
    "csr_conv2d_reference",
    "csr_conv2d_grad_input",
    "csr_conv2d_grad_input_reference",
    "csr_conv2d_grad_weight",
    "csr_conv2d_grad_weight_reference",
    "compress_2_4",
    "compress_2_4_reference",
    "decompress_2_4",
    "decompress_2_4_reference",
    "twofour_linear",
    "twofour_linear_reference",
    "twofour_linear_grad_input",
    "twofour_linear_grad_input_reference",
    "twofour_linear_grad_weight",
    "twofour_linear_grad_weight_reference",
    "twofour_conv2d",
    "twofour_conv2d_grad_input",
    "twofour_conv2d_grad_weight",
]
