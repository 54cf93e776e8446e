"""The short GPU benchmark of tools/gpu_check.sh: one training step (forward + backward) of each sparse
layer kind next to the dense bf16 layer (cuBLAS / cuDNN) at the goal shapes, and cuSPARSE CSR
(`cupyx.scipy.sparse`, the peer a GPU user would try; forward only, float32) when cupy is
installed. Writes a markdown table (bench/results/gpu_check.md, or the path given).

    python -m bench.gpu_check [OUT.md]

Times are CUDA-event medians of `REPS` steps after `WARMUP`; every row names its backend, and a row
that cannot run says why instead of a number. Needs a CUDA GPU.
"""

from __future__ import annotations

import pathlib
import statistics
import sys

import torch
import torch.nn.functional as F

from ebsparse.formats import build_index
from ebsparse.formats.transposable import transposable_2_4_mask
from ebsparse.ops import prune_2_4, sparse_conv2d, sparse_linear

WARMUP, REPS = 3, 10
DTYPE = torch.bfloat16
LINEAR = [(4096, 4096, 4096), (256, 4096, 4096)]  # (tokens, in, out)
CONV = [(32, 128, 32, 3), (32, 256, 16, 3), (32, 512, 16, 1)]  # (batch, channels, size, kernel)


def _median_ms(step) -> float:
    times = []
    for i in range(WARMUP + REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        if i >= WARMUP:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def _train_step(fn, *tensors):
    def step():
        for t in tensors:
            t.grad = None
        fn().float().square().mean().backward()
    return step


def _row(rows, shape, what, backend, step, dense_ms):
    try:
        ms = _median_ms(step)
        rows.append((shape, what, backend, f"{ms:.3f}", f"{dense_ms / ms:.2f}x"))
    except Exception as exc:  # noqa: BLE001 - a row that cannot run says why
        rows.append((shape, what, backend, "-", f"not run: {type(exc).__name__}: {str(exc)[:80]}"))


def linear_rows(rows):
    dev = torch.device("cuda")
    for n, k, m in LINEAR:
        shape = f"linear {n}x{k}->{m}"
        x = torch.randn(n, k, device=dev, dtype=DTYPE, requires_grad=True)
        w = torch.randn(m, k, device=dev, dtype=DTYPE, requires_grad=True)
        dense_ms = _median_ms(_train_step(lambda: F.linear(x, w), x, w))
        rows.append((shape, "dense bf16", "cuBLAS", f"{dense_ms:.3f}", "1.00x"))
        masks = {"2:4": prune_2_4(w.detach()), "2:4 transposable": transposable_2_4_mask(w.detach()),
                 "90% unstructured": torch.rand(m, k, device=dev) < 0.1}
        for what, mask in masks.items():
            index = build_index(mask)
            backends = (["semi_structured", "triton", "dense"] if what.startswith("2:4")
                        else ["native", "triton", "dense"])
            for backend in backends:
                _row(rows, shape, what, backend, _train_step(
                    lambda: sparse_linear(x, w, None, mask, index=index, backend=backend), x, w), dense_ms)
        _cusparse_row(rows, shape, x.detach(), w.detach(), masks["90% unstructured"])


def _cusparse_row(rows, shape, x, w, mask):
    try:
        import cupy
        import cupyx.scipy.sparse as cusparse
    except ImportError:
        rows.append((shape, "90% unstructured", "cuSPARSE CSR (cupyx)", "-", "not run: cupy not installed"))
        return
    dense_fwd = _median_ms(lambda: F.linear(x, w))
    csr = cusparse.csr_matrix(cupy.asarray(torch.where(mask, w, 0).float()))
    xt = cupy.asarray(x.float().t().contiguous())
    try:
        ms = _median_ms(lambda: csr @ xt)
        rows.append((shape, "90% unstructured, fwd only, fp32", "cuSPARSE CSR (cupyx)", f"{ms:.3f}",
                     f"{dense_fwd / ms:.2f}x of dense bf16 fwd"))
    except Exception as exc:  # noqa: BLE001
        rows.append((shape, "90% unstructured", "cuSPARSE CSR (cupyx)", "-", f"not run: {exc}"))


def conv_rows(rows):
    dev = torch.device("cuda")
    for batch, c, size, k in CONV:
        shape = f"conv {c}ch {size}x{size} {k}x{k} batch {batch}"
        x = torch.randn(batch, c, size, size, device=dev, dtype=DTYPE).to(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(c, c, k, k, device=dev, dtype=DTYPE, requires_grad=True)
        pad = k // 2
        dense_ms = _median_ms(_train_step(lambda: F.conv2d(x, w, padding=pad), x, w))
        rows.append((shape, "dense bf16", "cuDNN", f"{dense_ms:.3f}", "1.00x"))
        masks = {"2:4": prune_2_4(w.detach()), "2:4 transposable": transposable_2_4_mask(w.detach())}
        for what, mask in masks.items():
            index = build_index(mask)
            for backend in ("semi_structured", "dense"):
                _row(rows, shape, what, backend, _train_step(
                    lambda: sparse_conv2d(x, w, None, mask, 1, pad, index=index, backend=backend), x, w), dense_ms)


def main(out: str | None = None) -> pathlib.Path:
    if not torch.cuda.is_available():
        sys.exit("bench.gpu_check needs a CUDA GPU")
    rows = []
    linear_rows(rows)
    conv_rows(rows)
    name = torch.cuda.get_device_name()
    text = (f"# GPU check on {name} (torch {torch.__version__}), bf16, one training step (fwd + bwd)\n\n"
            f"Median of {REPS} CUDA-event-timed steps after {WARMUP} warm-up. Goals (README): 2:4 linear >= 1.2x "
            "dense bf16 at 4096^2, 2:4 conv >= 1.15x at U-Net sizes.\n\n"
            "| shape | pattern | backend | ms | vs dense |\n|---|---|---|---:|---|\n"
            + "".join(f"| {' | '.join(r)} |\n" for r in rows))
    path = pathlib.Path(out or pathlib.Path(__file__).parent / "results" / "gpu_check.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
