"""Triton block-sparse attention (flash-style, ``tl.dot``): the semantics of
``torch.ops.ebsparse.block_attention`` / ``block_attention_backward`` (csrc/cpu/attention/).

Forward: one program per (query block, batch x head) walks the kept key blocks of its layout row
(CSR) with an online softmax; writes O and the row log-sum-exp (-inf for a row with no kept key,
whose O is 0). Backward: ``dq`` per query block over the same CSR, ``dk``/``dv`` per key block over
the layout's transpose (CSC), so no program writes another's rows (no atomics). The head width is
padded to a power of two >= 16 inside the kernels (masked loads), so pruned widths such as 72 run
on the same tensor-core path; the block size must be a power of two >= 16 (a ``tl.dot`` tile).
"""

from __future__ import annotations

import torch

from ._common import SUM, acc_dtype, kernel, require_available, tl

MAX = None if tl is None else tl.standard._elementwise_max


def num_stages(dtype: torch.dtype) -> int:
    """Pipelining stages of a launch: with fp32 tiles of 64 x 128, two stages of the backward already
    need 197 KB of shared memory (an A100 has 163 KB); tests/triton/test_block_attention_aot.py
    checks that every config fits."""
    return 2 if dtype in (torch.float16, torch.bfloat16) else 1


def _pow2(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


@kernel
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, crow_ptr, col_ptr, N, D, NBQ, HEADS, LAYOUT_HEADS, scale,
                ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    lh = (bh % HEADS) * (LAYOUT_HEADS > 1)
    base = bh * N * D
    rows = i * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    r_ok = rows < N
    d_ok = dims < D
    q = tl.load(q_ptr + base + rows[:, None] * D + dims[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0)
    m_i = tl.full([BLOCK], float("-inf"), ACC)
    l_i = tl.full([BLOCK], 0, ACC)
    acc = tl.full([BLOCK, BLOCK_D], 0, ACC)
    start = tl.load(crow_ptr + lh * (NBQ + 1) + i)
    end = tl.load(crow_ptr + lh * (NBQ + 1) + i + 1)
    for e in range(start, end):
        j = tl.load(col_ptr + e)
        cols = j * BLOCK + tl.arange(0, BLOCK)
        c_ok = cols < N
        kv_mask = c_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + base + cols[:, None] * D + dims[None, :], mask=kv_mask, other=0)
        s = tl.dot(q, tl.trans(k)).to(ACC) * scale
        s = tl.where(c_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, MAX))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, SUM)
        v = tl.load(v_ptr + base + cols[:, None] * D + dims[None, :], mask=kv_mask, other=0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(ACC)
        m_i = m_new
    live = l_i > 0
    out = tl.where(live[:, None], acc / tl.where(live, l_i, 1.0)[:, None], 0.0)
    tl.store(o_ptr + base + rows[:, None] * D + dims[None, :], out.to(o_ptr.dtype.element_ty),
             mask=r_ok[:, None] & d_ok[None, :])
    lse = tl.where(live, m_i + tl.log(tl.where(live, l_i, 1.0)), float("-inf"))
    tl.store(lse_ptr + bh * N + rows, lse.to(lse_ptr.dtype.element_ty), mask=r_ok)


@kernel
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, crow_ptr, col_ptr, N, D, NBQ, HEADS,
                   LAYOUT_HEADS, scale, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    lh = (bh % HEADS) * (LAYOUT_HEADS > 1)
    base = bh * N * D
    rows = i * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    r_ok = rows < N
    d_ok = dims < D
    rd = r_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + base + rows[:, None] * D + dims[None, :], mask=rd, other=0)
    do = tl.load(do_ptr + base + rows[:, None] * D + dims[None, :], mask=rd, other=0)
    lse = tl.load(lse_ptr + bh * N + rows, mask=r_ok, other=float("-inf")).to(ACC)
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # exp(s - inf) = 0: no kept key, no gradient
    delta = tl.load(delta_ptr + bh * N + rows, mask=r_ok, other=0).to(ACC)
    dq = tl.full([BLOCK, BLOCK_D], 0, ACC)
    start = tl.load(crow_ptr + lh * (NBQ + 1) + i)
    end = tl.load(crow_ptr + lh * (NBQ + 1) + i + 1)
    for e in range(start, end):
        j = tl.load(col_ptr + e)
        cols = j * BLOCK + tl.arange(0, BLOCK)
        c_ok = cols < N
        kv_mask = c_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + base + cols[:, None] * D + dims[None, :], mask=kv_mask, other=0)
        v = tl.load(v_ptr + base + cols[:, None] * D + dims[None, :], mask=kv_mask, other=0)
        s = tl.dot(q, tl.trans(k)).to(ACC) * scale
        p = tl.where(c_ok[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v)).to(ACC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k).to(ACC)
    tl.store(dq_ptr + base + rows[:, None] * D + dims[None, :], (dq * scale).to(dq_ptr.dtype.element_ty), mask=rd)


@kernel
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, ccol_ptr, row_ptr, N, D, NBK,
                     HEADS, LAYOUT_HEADS, scale, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    lh = (bh % HEADS) * (LAYOUT_HEADS > 1)
    base = bh * N * D
    cols = j * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    c_ok = cols < N
    d_ok = dims < D
    cd = c_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + base + cols[:, None] * D + dims[None, :], mask=cd, other=0)
    v = tl.load(v_ptr + base + cols[:, None] * D + dims[None, :], mask=cd, other=0)
    dk = tl.full([BLOCK, BLOCK_D], 0, ACC)
    dv = tl.full([BLOCK, BLOCK_D], 0, ACC)
    start = tl.load(ccol_ptr + lh * (NBK + 1) + j)
    end = tl.load(ccol_ptr + lh * (NBK + 1) + j + 1)
    for e in range(start, end):
        i = tl.load(row_ptr + e)
        rows = i * BLOCK + tl.arange(0, BLOCK)
        r_ok = rows < N
        rd = r_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + base + rows[:, None] * D + dims[None, :], mask=rd, other=0)
        do = tl.load(do_ptr + base + rows[:, None] * D + dims[None, :], mask=rd, other=0)
        lse = tl.load(lse_ptr + bh * N + rows, mask=r_ok, other=float("-inf")).to(ACC)
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
        delta = tl.load(delta_ptr + bh * N + rows, mask=r_ok, other=0).to(ACC)
        s = tl.dot(q, tl.trans(k)).to(ACC) * scale
        p = tl.where(c_ok[None, :], tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do).to(ACC)
        dp = tl.dot(do, tl.trans(v)).to(ACC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q).to(ACC)
    tl.store(dk_ptr + base + cols[:, None] * D + dims[None, :], (dk * scale).to(dk_ptr.dtype.element_ty), mask=cd)
    tl.store(dv_ptr + base + cols[:, None] * D + dims[None, :], dv.to(dv_ptr.dtype.element_ty), mask=cd)


#: element bytes x block x padded head width a program may hold: the backward's dk/dv program keeps
#: four such tiles and stages two more, 98 KB at the limit (bf16 64 x 128, fp32 64 x 64 or 32 x 128);
#: fp32 64 x 128 needs 197 KB, more than an A100's 163 KB of shared memory (measured with triton.aot).
TILE_BYTES = 2 * 64 * 128


def _check(q, k, v, crow, col, block_size):
    if block_size < 16 or block_size & (block_size - 1):
        raise RuntimeError(f"block_size: the Triton kernel needs a power of two >= 16 (a tl.dot tile), got {block_size}")
    if q.element_size() * block_size * _pow2(q.shape[-1]) > TILE_BYTES:
        raise RuntimeError(f"block_size {block_size} with head width {q.shape[-1]} (padded to {_pow2(q.shape[-1])}) in "
                           f"{q.dtype}: a tile of more than {TILE_BYTES} bytes does not fit the GPU's shared memory; "
                           "use bf16/fp16 or a smaller block")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise RuntimeError(f"query/key/value: expected equal (B, H, N, D) shapes, got {q.shape}, {k.shape}, {v.shape}")
    if crow.dtype != torch.int32 or col.dtype != torch.int32:
        raise RuntimeError("crow/col: expected int32")


def block_attention(q, k, v, crow, col, block_size: int, scale: float):
    """(out, lse): see the module doc. q/k/v (B, H, N, D) contiguous; crow (layout heads, nb + 1)."""
    require_available(q.device, "block_attention")
    _check(q, k, v, crow, col, block_size)
    b, h, n, d = q.shape
    nb = crow.shape[1] - 1
    out = torch.empty_like(q)
    lse = torch.empty(b, h, n, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32, device=q.device)
    _fwd_kernel[(nb, b * h)](q, k, v, out, lse, crow, col, n, d, nb, h, crow.shape[0], float(scale),
                             ACC=acc_dtype(q.dtype), BLOCK=block_size, BLOCK_D=_pow2(d),
                             num_stages=num_stages(q.dtype))
    return out, lse


def _transpose(crow, col, nb):
    """The CSC (per layout head) of a CSR layout: for each key block, the query blocks that keep it."""
    heads = crow.shape[0]
    lay = torch.zeros(heads, nb, nb, dtype=torch.bool)
    c, r = crow.cpu().long(), col.cpu().long()
    for h in range(heads):
        counts = c[h, 1:] - c[h, :-1]
        rows = torch.repeat_interleave(torch.arange(nb), counts)
        lay[h, rows, r[c[h, 0]:c[h, -1]]] = True
    from ebsparse.formats.block_layout import layout_csr

    ccol, row = layout_csr(lay.transpose(1, 2).contiguous())
    return ccol.to(crow.device), row.to(crow.device)


def block_attention_backward(grad_out, q, k, v, out, lse, crow, col, block_size: int, scale: float):
    """(dq, dk, dv) of :func:`block_attention`."""
    require_available(q.device, "block_attention_backward")
    _check(q, k, v, crow, col, block_size)
    b, h, n, d = q.shape
    nb = crow.shape[1] - 1
    delta = (grad_out.to(torch.float32 if q.dtype != torch.float64 else q.dtype) * out).sum(-1).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = dict(ACC=acc_dtype(q.dtype), BLOCK=block_size, BLOCK_D=_pow2(d), num_stages=num_stages(q.dtype))
    _bwd_dq_kernel[(nb, b * h)](q, k, v, grad_out, lse, delta, dq, crow, col, n, d, nb, h, crow.shape[0],
                                float(scale), **meta)
    ccol, row = _transpose(crow, col, nb)
    _bwd_dkdv_kernel[(nb, b * h)](q, k, v, grad_out, lse, delta, dk, dv, ccol, row, n, d, nb, h, crow.shape[0],
                                  float(scale), **meta)
    return dq, dk, dv
