"""Functional sparse ops, registered with torch.library, each with a pure-PyTorch reference."""

from ebsparse.ops.attention import block_sparse_attention
from ebsparse.ops.block_conv import block_sparse_conv2d
from ebsparse.ops.block_linear import block_sparse_linear
from ebsparse.ops.conv import sparse_conv2d
from ebsparse.ops.dropout import dropout
from ebsparse.ops.gated_residual import gated_residual
from ebsparse.ops.gelu_tanh import gelu_tanh
from ebsparse.ops.group_norm_silu import group_norm_silu
from ebsparse.ops.layer_norm_modulate import layer_norm_modulate
from ebsparse.ops.linear import sparse_linear
from ebsparse.ops.mlp_gelu_tanh import sparse_mlp_gelu_tanh, sparse_mlp_gelu_tanh_reference
from ebsparse.ops.qkv_attention import qkv_attention
from ebsparse.ops.reference import (block_sparse_attention_reference, gated_residual_reference,
                                    group_norm_silu_reference, layer_norm_modulate_reference, prune_2_4_reference,
                                    qkv_attention_reference, sparse_conv2d_reference, sparse_linear_reference)
from ebsparse.ops.twofour import compress_2_4, decompress_2_4, prune_2_4

__all__ = [
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "qkv_attention",
    "qkv_attention_reference",
    "sparse_linear",
    "sparse_mlp_gelu_tanh",
    "sparse_mlp_gelu_tanh_reference",
    "sparse_conv2d",
    "block_sparse_linear",
    "block_sparse_conv2d",
    "sparse_linear_reference",
    "sparse_conv2d_reference",
    "prune_2_4",
    "prune_2_4_reference",
    "compress_2_4",
    "decompress_2_4",
    "group_norm_silu",
    "gelu_tanh",
    "dropout",
    "layer_norm_modulate",
    "gated_residual",
    "group_norm_silu_reference",
    "layer_norm_modulate_reference",
    "gated_residual_reference",
]
