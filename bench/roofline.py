"""A roofline MODEL of the GPU kernels: bytes moved and FLOPs of each kernel at each shape, and the
time that implies on an A100 and an H100 from their published HBM bandwidth and tensor-core peaks.
Nothing here is measured: it is the argument for which kernel is worth writing (a sparse kernel
whose bound is not well below dense cuBLAS's is not), to be checked against `tools/gpu_check.sh`
the day a GPU runs it.

API (small on purpose, reused by the block-sparse and attention benches):

- `Cost(name, flops, bytes, unit, dtype, launches)`: one kernel's work. `flops` counts the
  dense-equivalent math the unit executes (2·N·M·K for a GEMM, on sparse tensor cores too: their
  published 2:4 peak counts the skipped zeros); `bytes` the minimum HBM traffic; `unit` one of
  `UNITS`.
- `predict(cost, gpu) -> Prediction`: the lower bound max(flops / peak, bytes / bandwidth) plus the
  launch latency, and `expected`, the same with the achievable fractions of peak in `EFFICIENCY`
  (assumptions of the model, stated once here).
- `step_time(costs, gpu)`: the sum over the kernels of a training step.
- `linear_step(...)` / `conv_step(...)`: the kernels of one training step (forward, grad-input,
  grad-weight) of each implementation, `table(...)`: the markdown table.

`python -m bench.roofline` writes bench/results/roofline.md (EBSPARSE_BENCH_RESULTS names another
folder).
"""

from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass, field

# ---- hardware ------------------------------------------------------------------------------------

UNITS = ("tensor", "sparse_tensor", "simt")


@dataclass(frozen=True)
class Gpu:
    """Published peaks (dense-equivalent FLOP/s) per (unit, dtype), HBM bytes/s, launch latency."""

    name: str
    bandwidth: float
    peaks: dict = field(hash=False)
    launch_s: float = 4e-6

    def peak(self, unit: str, dtype: str) -> float:
        try:
            return self.peaks[(unit, dtype)]
        except KeyError:
            raise ValueError(f"unit/dtype: {self.name} has no peak for {unit}/{dtype}; "
                             f"known: {sorted(self.peaks)}") from None


# NVIDIA A100 SXM4 80GB and H100 SXM5 datasheets (dense; "sparse_tensor" = the 2:4 figure).
A100 = Gpu("A100-SXM4", 2.039e12, {
    ("tensor", "bf16"): 312e12, ("tensor", "fp16"): 312e12, ("tensor", "tf32"): 156e12,
    ("sparse_tensor", "bf16"): 624e12, ("sparse_tensor", "fp16"): 624e12, ("sparse_tensor", "tf32"): 312e12,
    ("simt", "fp32"): 19.5e12, ("simt", "bf16"): 39e12, ("simt", "fp16"): 39e12, ("simt", "fp64"): 9.7e12,
})
H100 = Gpu("H100-SXM5", 3.35e12, {
    ("tensor", "bf16"): 989e12, ("tensor", "fp16"): 989e12, ("tensor", "tf32"): 495e12,
    ("sparse_tensor", "bf16"): 1979e12, ("sparse_tensor", "fp16"): 1979e12, ("sparse_tensor", "tf32"): 989e12,
    ("simt", "fp32"): 67e12, ("simt", "bf16"): 134e12, ("simt", "fp16"): 134e12, ("simt", "fp64"): 34e12,
})
GPUS = {"A100": A100, "H100": H100}

# Achievable fraction of peak, an assumption of the model: cuBLAS reaches ~75-80% of the tensor
# peak on large GEMMs; cuSPARSELt's 2:4 GEMMs are reported at 1.3-1.7x dense, i.e. ~60% of the
# sparse peak; irregular gathers keep SIMT code far from its FMA peak; streaming kernels reach
# ~85% of HBM bandwidth.
EFFICIENCY = {"tensor": 0.78, "sparse_tensor": 0.6, "simt": 0.3, "memory": 0.85}

BYTES = {"bf16": 2, "fp16": 2, "tf32": 4, "fp32": 4, "fp64": 8}


@dataclass(frozen=True)
class Cost:
    name: str
    flops: float
    bytes: float
    unit: str = "tensor"
    dtype: str = "bf16"
    launches: int = 1

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unit: expected one of {UNITS}, got {self.unit!r}")
        if self.flops < 0 or self.bytes < 0:
            raise ValueError(f"flops/bytes: expected >= 0, got {self.flops}, {self.bytes}")


@dataclass(frozen=True)
class Prediction:
    compute_s: float
    memory_s: float
    bound_s: float  # at peak: the lower bound
    expected_s: float  # at the EFFICIENCY fractions
    limited_by: str  # "compute" or "memory"


def predict(cost: Cost, gpu: Gpu) -> Prediction:
    compute = cost.flops / gpu.peak(cost.unit, cost.dtype)
    memory = cost.bytes / gpu.bandwidth
    latency = cost.launches * gpu.launch_s
    expected = max(compute / EFFICIENCY[cost.unit], memory / EFFICIENCY["memory"]) + latency
    return Prediction(compute, memory, max(compute, memory) + latency, expected,
                      "compute" if compute >= memory else "memory")


def step_time(costs: list[Cost], gpu: Gpu, expected: bool = True) -> float:
    return sum(predict(c, gpu).expected_s if expected else predict(c, gpu).bound_s for c in costs)


# ---- the kernels of one training step ------------------------------------------------------------

def _gemm(name, n, k, m, dtype, unit="tensor", a_bytes=None, b_bytes=None, c_bytes=None, flops=None):
    """C (n, m) = A (n, k) . B (k, m): operands read once, result written once (cuBLAS-like tiling
    keeps re-reads in L2 at these sizes)."""
    e = BYTES[dtype]
    a = n * k * e if a_bytes is None else a_bytes
    b = k * m * e if b_bytes is None else b_bytes
    c = n * m * e if c_bytes is None else c_bytes
    return Cost(name, 2.0 * n * k * m if flops is None else flops, a + b + c, unit, dtype)


def _compress(name, m, k, dtype, copies=1):
    """Read the dense weight and mask, write values (half) and 2-bit metadata, per copy."""
    e = BYTES[dtype]
    return Cost(name, 0.0, copies * (m * k * e + m * k + m * k * e / 2 + m * k / 8), "simt", dtype, copies)


def _masked_weight(m, k, dtype):
    """The dense path's masked weight: read weight and mask bits, write the masked copy."""
    e = BYTES[dtype]
    return Cost("mask W", 0.0, 3 * m * k * e, "simt", dtype)


def _csr_step(n, k, m, e, x, density, dtype) -> list[Cost]:
    nnz = density * m * k
    return [Cost("fwd", 2.0 * n * nnz, x + nnz * (e + 4) + n * m * e, "simt", dtype),
            Cost("dgrad", 2.0 * n * nnz, n * m * e + nnz * (e + 4) + x, "simt", dtype),
            Cost("wgrad", 2.0 * n * nnz, n * m * e + x + nnz * (e + 4), "simt", dtype)]


def gemm_step(n: int, k: int, m: int, dtype: str = "bf16", density_24: float = 0.5,
              unstructured_densities: tuple[float, ...] = (0.1, 0.05), taps: int = 1) -> dict[str, list[Cost]]:
    """Kernels of one training step of Y (n, m) = X (n, k) . W^T, W (m, k), per implementation.
    Conv layers enter as their implicit GEMM (n = batch·Ho·Wo, k = Ci·taps, m = Co, taps = KH·KW):
    the activations move once (n·k/taps values), not once per tap."""
    e = BYTES[dtype]
    x = n * k * e / taps  # X, or dX: the activations as stored
    w_24 = m * k * e * density_24 + m * k / 8  # values + 2-bit metadata per kept value pair
    w_meta = m * k * e + m * k / 4  # dense-shaped weight + one metadata byte per group of 4
    cols = x if taps == 1 else n * k * e  # what an im2col GEMM reads as X: the unfolded rows
    unfolds = [] if taps == 1 else [Cost("im2col x2", 0.0, 2 * (x + cols), "simt", dtype, 2),
                                    Cost("col2im", 0.0, cols + x, "simt", dtype)]
    steps = {
        # The baseline of the goals: a dense layer (nn.Linear / cuDNN conv), three GEMMs.
        "dense cuBLAS": [_gemm("fwd", n, k, m, dtype, a_bytes=x), _gemm("dgrad", n, m, k, dtype, c_bytes=x),
                         _gemm("wgrad", m, n, k, dtype, b_bytes=x)],
        # ebsparse's dense path (DenseBackend, the fallback of a sparse layer): the same GEMMs plus
        # masking the weight and its gradient.
        "dense path (masked)": [_masked_weight(m, k, dtype),
                                _gemm("fwd", n, k, m, dtype, a_bytes=x), _gemm("dgrad", n, m, k, dtype, c_bytes=x),
                                _gemm("wgrad", m, n, k, dtype, b_bytes=x),
                                Cost("mask dW", 0.0, 3 * m * k * e, "simt", dtype)],
        # ebsparse.backends.semi_structured as built: W and (transposable mask) W^T compressed each
        # step by torch, one pass each; fwd and dgrad on sparse tensor cores; dW by the Triton
        # kernel with the masking in its epilogue.
        # A KxK conv (taps > 1) goes through im2col there: the unfolded rows (n*k values) are written
        # and read back in each GEMM, and dgrad's are folded back.
        "2:4 sparse TC": [_compress("compress W, W^T", m, k, dtype, copies=2), *unfolds,
                          _gemm("fwd", n, k, m, dtype, "sparse_tensor", a_bytes=cols, b_bytes=w_24),
                          _gemm("dgrad", n, m, k, dtype, "sparse_tensor", b_bytes=w_24, c_bytes=cols),
                          _gemm("wgrad", m, n, k, dtype, b_bytes=cols, c_bytes=w_meta)],
        # Not built (a design): one pass reading W and writing both compressed copies, and convs as
        # implicit GEMMs on sparse tensor cores (no im2col).
        "2:4 sparse TC, fused (design)": [
            Cost("compress W+W^T", 0.0, m * k * e + m * k / 8 + 2 * w_24, "simt", dtype),
            _gemm("fwd", n, k, m, dtype, "sparse_tensor", a_bytes=x, b_bytes=w_24),
            _gemm("dgrad", n, m, k, dtype, "sparse_tensor", b_bytes=w_24, c_bytes=x),
            _gemm("wgrad", m, n, k, dtype, b_bytes=x, c_bytes=w_meta)],
        # ebsparse.triton.twofour_linear_kernels (training form): the dense-shaped W read once per
        # GEMM with its uint8 metadata (one byte per group), dropped entries zeroed in registers,
        # dense tl.dot; dW masked in the kernel's epilogue: no separate masking passes.
        "2:4 Triton (dense TC)": [_gemm("fwd", n, k, m, dtype, a_bytes=x, b_bytes=w_meta),
                                  _gemm("dgrad", n, m, k, dtype, b_bytes=w_meta, c_bytes=x),
                                  _gemm("wgrad", m, n, k, dtype, b_bytes=x, c_bytes=w_meta)],
        # Row-split CSR gather on CUDA cores (the old per-element Triton kernels, at best): the
        # useful FLOPs only, each kept weight with its 4-byte index.
        **{f"CSR {1 - d:.0%} SIMT": _csr_step(n, k, m, e, x, d, dtype) for d in unstructured_densities},
    }
    return steps


LINEAR_SHAPES = [  # (tokens n, in k, out m)
    (4096, 4096, 4096), (16384, 4096, 4096), (256, 4096, 4096), (4096, 1024, 4096),
]
# DDPM CIFAR-10 / LSUN U-Net 3x3 convs at batch 128, as implicit GEMMs (n = batch·H·W, k = Ci·9, m = Co).
CONV_SHAPES = [  # (label, n, k, m, taps)
    ("conv 128ch 32x32 3x3", 128 * 32 * 32, 128 * 9, 128, 9),
    ("conv 256ch 16x16 3x3", 128 * 16 * 16, 256 * 9, 256, 9),
    ("conv 256ch 8x8 3x3", 128 * 8 * 8, 256 * 9, 256, 9),
    ("conv 512ch 16x16 1x1", 128 * 16 * 16, 512, 512, 1),
]


def rows(dtype: str = "bf16") -> list[dict]:
    """One row per (shape, implementation): model times on each GPU and the speed-up over dense."""
    out = []
    shapes = [(f"linear {n}x{k}->{m}", n, k, m, 1) for n, k, m in LINEAR_SHAPES] + CONV_SHAPES
    for label, n, k, m, taps in shapes:
        steps = gemm_step(n, k, m, dtype, taps=taps)
        dense = {g: step_time(steps["dense cuBLAS"], gpu) for g, gpu in GPUS.items()}
        for impl, costs in steps.items():
            row = {"shape": label, "impl": impl,
                   "gflop": sum(c.flops for c in costs) / 1e9, "mbytes": sum(c.bytes for c in costs) / 1e6}
            for g, gpu in GPUS.items():
                t = step_time(costs, gpu)
                row[f"{g} us"] = t * 1e6
                row[f"{g} x dense"] = dense[g] / t
                row[f"{g} bound"] = max(costs, key=lambda c: predict(c, gpu).bound_s).name + ":" + \
                    predict(max(costs, key=lambda c: predict(c, gpu).bound_s), gpu).limited_by
            out.append(row)
    return out


def empty_tile_fraction(density: float, rows: int, cols: int) -> float:
    """Expected fraction of (rows x cols) weight tiles with no kept entry under unstructured (i.i.d.)
    sparsity: the only work a tile-skipping tensor-core kernel can skip on such a mask."""
    return (1.0 - density) ** (rows * cols)


def unstructured_note() -> str:
    """Why unstructured masks get no tensor-core kernel: the tiles a tensor core needs are almost
    never empty, and a per-row condensed K gives each output row its own operand (CUDA cores)."""
    parts = [f"{1 - d:.0%} sparse: {empty_tile_fraction(d, r, c):.1e} of {r}x{c} tiles empty"
             for d in (0.1, 0.05) for r, c in ((16, 16), (64, 32))]
    return ("Unstructured masks on tensor cores: " + "; ".join(parts) + ". A tile-skipping kernel skips "
            "nothing, so it does the dense math plus the masking: at best dense speed. The CSR rows above "
            "(useful FLOPs only, on CUDA cores, 30% of their FMA peak for irregular gathers) reach about half "
            "of dense bf16 at 90% and about dense at 95% for compute-bound shapes: no margin worth a kernel, "
            "so no unstructured tensor-core kernel was written.\n")


def table(dtype: str = "bf16") -> str:
    head = ("| shape | implementation | GFLOP | MB | A100 us | A100 x dense | H100 us | H100 x dense | "
            "H100 longest kernel |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n")
    body = "".join(
        f"| {r['shape']} | {r['impl']} | {r['gflop']:.1f} | {r['mbytes']:.1f} | {r['A100 us']:.0f} | "
        f"{r['A100 x dense']:.2f} | {r['H100 us']:.0f} | {r['H100 x dense']:.2f} | {r['H100 bound']} |\n"
        for r in rows(dtype))
    eff = ", ".join(f"{k} {v:.0%}" for k, v in EFFICIENCY.items())
    return (f"# Roofline MODEL of one training step (fwd + grad-input + grad-weight), {dtype}\n\n"
            "Not a measurement: times are max(FLOPs / peak, bytes / bandwidth) per kernel at the achievable "
            f"fractions of peak assumed in bench/roofline.py ({eff}), plus {A100.launch_s * 1e6:.0f} us per "
            "launch, summed over the step's kernels. Peaks: A100 SXM4 312 (2:4: 624) TFLOP/s bf16, 2.0 TB/s; "
            "H100 SXM5 989 (2:4: 1979) TFLOP/s bf16, 3.35 TB/s. Conv rows are implicit GEMMs "
            "(n = batch·H·W, k = Ci·9, m = Co) at batch 128.\n\n" + head + body + "\n" + unstructured_note())


def write(folder: str | os.PathLike | None = None, dtype: str = "bf16") -> pathlib.Path:
    folder = pathlib.Path(folder or os.environ.get("EBSPARSE_BENCH_RESULTS")
                          or pathlib.Path(__file__).parent / "results")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "roofline.md"
    path.write_text(table(dtype))
    return path


if __name__ == "__main__":
    print(write().read_text())
