"""Roofline MODEL (not a measurement) of the Triton block kernels (ebsparse/triton/block_*.py) on
A100 and H100 at 90% block sparsity vs dense bf16, for a 4096^2 linear layer and CIFAR-10 U-Net-size
convolutions: one training step (forward, grad-input, grad-weight).

For each phase: useful FLOPs and the bytes that must cross HBM (each operand read once, the output
written once; block kernels read the kept weight blocks and their int32 index). Time bound =
max(FLOPs / bf16 tensor-core peak, bytes / HBM bandwidth), the published figures (A100 SXM 80 GB:
312 TFLOP/s, 2.0 TB/s; H100 SXM: 989 TFLOP/s, 3.35 TB/s). A second column counts the traffic the
kernels as written add on chip: every kept block re-loads its input tile (SpMM) and every
(block, tap) program re-reads the whole grad_output and input rows it needs (SDDMM); served by L2
at an ASSUMED 5 TB/s (A100) / 10 TB/s (H100), which NVIDIA does not publish.

Run: ``python -m bench.roofline_block`` (prints a markdown table).
"""

from __future__ import annotations

from dataclasses import dataclass

GPUS = {"A100": dict(peak=312e12, hbm=2.0e12, l2=5e12), "H100": dict(peak=989e12, hbm=3.35e12, l2=10e12)}
BYTES = 2  # bf16


@dataclass
class Layer:
    name: str
    n: int  # images (conv) or tokens (linear)
    cin: int
    cout: int
    hw: int  # output pixels per image (1 for linear)
    taps: int  # kh * kw (1 for linear)
    in_hw: int  # input pixels per image

    def flops(self) -> float:  # one GEMM phase, dense
        return 2.0 * self.n * self.hw * self.cout * self.cin * self.taps


LAYERS = [Layer("linear 4096x4096, 4096 tokens", 4096, 4096, 4096, 1, 1, 1),
          Layer("conv 128->128 3x3 32x32, batch 128", 128, 128, 128, 32 * 32, 9, 32 * 32),
          Layer("conv 256->256 3x3 16x16, batch 128", 128, 256, 256, 16 * 16, 9, 16 * 16),
          Layer("conv 256->256 3x3 8x8, batch 128", 128, 256, 256, 8 * 8, 9, 8 * 8)]


def phase_bytes(layer: Layer, density: float, block: tuple[int, int] | None) -> float:
    """HBM bytes of one phase: activations in and out once, the weight (kept blocks) once."""
    x = layer.n * layer.cin * layer.in_hw * BYTES
    y = layer.n * layer.cout * layer.hw * BYTES
    w = layer.cout * layer.cin * layer.taps * BYTES * density
    index = 0.0 if block is None else 4.0 * density * layer.cout * layer.cin / (block[0] * block[1])
    return x + y + w + index


def onchip_bytes(layer: Layer, density: float, block: tuple[int, int], block_p: int = 64) -> float:
    """Extra (L2) traffic of the kernels as written, per training step."""
    bo, bi = block
    pixels = layer.n * layer.hw
    kept_blocks = density * (layer.cout // bo) * (layer.cin // bi)
    spmm = kept_blocks * layer.taps * (bi * pixels + bo * bi * pixels / block_p) * BYTES  # forward
    spmm_t = kept_blocks * layer.taps * (bo * pixels + bo * bi * pixels / block_p) * BYTES  # grad-input
    sddmm = kept_blocks * layer.taps * (bo + bi) * pixels * BYTES  # grad-weight
    return spmm + spmm_t + sddmm


def step(layer: Layer, gpu: dict, density: float, block) -> tuple[float, float]:
    """(HBM roofline seconds, seconds including the on-chip traffic) of fwd + grad-input + grad-weight."""
    hbm = 3 * max(density * layer.flops() / gpu["peak"], phase_bytes(layer, density, block) / gpu["hbm"])
    if block is None:
        return hbm, hbm
    return hbm, max(hbm, onchip_bytes(layer, density, block) / gpu["l2"])


def table(density: float = 0.1, blocks=((16, 16), (32, 32))) -> str:
    lines = ["| GPU | layer (training step) | dense bf16 bound (us) | block | 90% block HBM roofline (us) | ratio | "
             "with on-chip re-reads (us, assumed L2) | ratio |", "|---|---|---|---|---|---|---|---|"]
    for gname, gpu in GPUS.items():
        for layer in LAYERS:
            dense = step(layer, gpu, 1.0, None)[0]
            for block in blocks:
                hbm, chip = step(layer, gpu, density, block)
                lines.append(f"| {gname} | {layer.name} | {dense * 1e6:.0f} | {block[0]}x{block[1]} | "
                             f"{hbm * 1e6:.0f} | "
                             f"{hbm / dense:.2f}x | {chip * 1e6:.0f} | {chip / dense:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("Roofline MODEL (not measured): Triton block kernels at 90% block sparsity vs dense bf16, one training "
          "step (fwd + grad-input + grad-weight).\n")
    print(table())
