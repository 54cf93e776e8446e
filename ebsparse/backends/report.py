"""`report()`: which backend can run which op here, and why not where it cannot."""

from __future__ import annotations

import torch

from ebsparse.backends.extension import extension_error, has_cuda_kernels
from ebsparse.backends.registry import registered_backends



def _op_order(op: str) -> tuple:
    return (op not in ("linear", "conv2d"), op)  # the layer ops first


def availability() -> list[dict]:
    """One row per (op, backend, device, dtype): `reasons` is empty where the backend can run."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    ops = sorted(set().union(*(b.ops for b in registered_backends().values())), key=_op_order)
    for op in ops:
        for name, backend in registered_backends().items():
            for device in devices:
                for dtype in (torch.float32, torch.float64, torch.bfloat16):
                    rows.append(dict(op=op, backend=name, device=device.type, dtype=str(dtype).replace("torch.", ""),
                                     reasons=backend.unavailable_reasons(op, device, dtype)))
    return rows


def native_cpu_capability() -> str:
    """What torch.ops.ebsparse.cpu_capability() reports ("avx2" or "avx512"), or why it cannot."""
    try:
        return torch.ops.ebsparse.cpu_capability()
    except (AttributeError, RuntimeError) as error:  # extension not built, or a bad variable
        return f"unavailable ({str(error).splitlines()[0]})"


def report(print_it: bool = True) -> str:
    """Human-readable availability table, plus build facts (extension, CUDA kernels, CPU ISA)."""
    lines = [
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}; GPU present: {torch.cuda.is_available()})",
        f"extension ebsparse._C: {extension_error() or 'loaded'}",
        f"CUDA kernels compiled in: {has_cuda_kernels()}",
        f"CPU capability used by torch: {torch.backends.cpu.get_cpu_capability()}; threads: {torch.get_num_threads()}",
        f"CPU capability of the native kernels (EBSPARSE_CPU_CAPABILITY): {native_cpu_capability()}",
        "",
        f"{'op':14} {'backend':8} {'device':6} {'dtype':9} status",
    ]
    for row in availability():
        status = "available" if not row["reasons"] else "unavailable: " + "; ".join(row["reasons"])
        lines.append(f"{row['op']:14} {row['backend']:8} {row['device']:6} {row['dtype']:9} {status}")
    text = "\n".join(lines)
    if print_it:
        print(text)
    return text
