"""Shared by the op tests: backends to test and tolerances relative to the reference."""

import torch

import ebsparse  # noqa: F401  (registers backends)
from ebsparse.backends import registered_backends


def usable_backends(op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Every registered backend that can run `op` here (Triton only when its interpreter is on)."""
    return [name for name, b in registered_backends().items() if not b.unavailable_reasons(op, device, dtype)]


def tolerance(dtype: torch.dtype, scale: float) -> dict:
    """Absolute/relative error allowed against the fp64 reference, scaled by the sum magnitude."""
    eps = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype]
    return dict(atol=eps * max(1.0, scale), rtol=eps * 10)
