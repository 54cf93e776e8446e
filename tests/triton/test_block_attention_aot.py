"""The Triton block-sparse attention kernels compile ahead of time for sm_80 and sm_90 with tensor
cores (``mma`` in the PTX) and fit the SM's shared memory; bf16 and fp32 (tf32) inputs, the pruned
DiT-XL/2 head width 72 (padded to 128 inside the kernel); the launcher refuses larger tiles.

The compile runs in a fresh interpreter without TRITON_INTERPRET (tests/conftest.py sets it): the
forward kernel's row max and sum use triton.language's combine functions, which are
interpreter-only objects in a process where the interpreter was on when triton was imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = r"""
import importlib, json
import torch
import triton.language as tl
from ebsparse.triton.aot import compile_for
kernels = importlib.import_module("ebsparse.triton.block_attention")
INTS = {"N", "D", "NBQ", "NBK", "HEADS", "LAYOUT_HEADS"}
INDEX = {"crow_ptr", "col_ptr", "ccol_ptr", "row_ptr"}
out = []
for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"):
    fn = getattr(kernels, name).fn
    args = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    # the largest tiles the launcher accepts (kernels.TILE_BYTES): bf16 64 x 128 (head width 72 or 128),
    # fp32 (tf32 mma) 64 x 64 and 32 x 128
    for dtype, block, width in (("bf16", 64, 72), ("fp32", 64, 64), ("fp32", 32, 72)):
        consts = {"ACC": tl.float32, "BLOCK": block, "BLOCK_D": kernels._pow2(width)}
        sig = {a: "i32" if a in INTS else "fp32" if a == "scale" else "*i32" if a in INDEX
               else "*fp32" if a in ("lse_ptr", "delta_ptr") else f"*{dtype}" for a in args if a not in consts}
        for arch in (80, 90):
            stages = kernels.num_stages(torch.bfloat16 if dtype == "bf16" else torch.float32)
            k = compile_for(fn, sig, consts, arch, num_stages=stages)
            out.append([name, f"{dtype} {block}x{width}", arch, k.uses_tensor_cores, k.shared_bytes])
print(json.dumps(out))
"""
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def test_kernels_compile_to_tensor_core_ptx_that_fits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(rows) == 18
    for name, dtype, arch, tensor_cores, shared in rows:
        assert tensor_cores, f"{name} sm_{arch} {dtype}: no mma in the PTX"
        assert 0 < shared <= SHARED_LIMIT[arch], f"{name} sm_{arch} {dtype}: {shared} bytes of shared memory"


def test_launcher_refuses_tiles_that_do_not_fit():
    import torch

    from ebsparse.triton.block_attention import block_attention

    q = torch.zeros(1, 1, 64, 72)
    crow, col = torch.zeros(1, 2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="does not fit the GPU's shared memory"):
        block_attention(q, q, q, crow, col, 64, 0.1)
