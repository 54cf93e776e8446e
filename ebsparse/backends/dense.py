"""The dense backend: masked dense PyTorch (MKL/oneDNN/cuBLAS). Runs everywhere; it is the fallback
that keeps a sparse layer from ever being slower than dense."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebsparse.ops.registry import Backend


class DenseBackend(Backend):
    name = "dense"
    ops = frozenset({"linear", "conv2d"})

    def linear_forward(self, input, weight, bias, mask, index):
        return F.linear(input, weight * mask, bias)

    def linear_grad_input(self, grad_output, weight, mask, index):
        return grad_output.mm(weight * mask)

    def linear_grad_weight(self, grad_output, input, mask, index):
        return grad_output.t().mm(input) * mask

    def conv2d_forward(self, input, weight, bias, mask, index, stride, padding, dilation):
        return F.conv2d(input, weight * mask, bias, stride, padding, dilation)

    def conv2d_grad_input(self, grad_output, weight, mask, index, input_size, stride, padding, dilation):
        return torch.nn.grad.conv2d_input(input_size, weight * mask, grad_output, stride, padding, dilation)

    def conv2d_grad_weight(self, grad_output, input, mask, index, weight_size, stride, padding, dilation):
        grad = torch.nn.grad.conv2d_weight(input, weight_size, grad_output, stride, padding, dilation)
        return grad * mask
