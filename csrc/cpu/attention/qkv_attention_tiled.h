// Private to csrc/cpu/attention: qkv_attention's float32 per-(batch, head) work on AVX-512, with
// its own register-tiled products instead of sgemm_ (qkv_attention_avx512.cpp). Reached only when
// cpu_capability() chose AVX-512; float64 and AVX2 keep the BLAS path in qkv_attention.cpp.
//
// Why: at DiT-S/2's 64 tokens x 64 head dims each product is 64 x 64 x 64, where MKL's per-call
// checks and its packing of both operands cost about as much as the arithmetic. Here the operands
// stay where they are (token-major, read through their row strides); only K^T and V^T are
// transposed into per-thread scratch, the one operand layout a broadcast-A x row-B kernel lacks.
#pragma once

#include <cstdint>

namespace ebsparse::attention {

// Floats of per-thread scratch the tiled head functions below need for n tokens and head dim d.
int64_t tiled_scratch_floats(int64_t n, int64_t d);

// One (batch, head) of the forward: q, k, v (n x d, row stride ld), out (n x d, row stride ldo),
// lse (n values); probs, unless null, receives P (n x n, contiguous). scratch: tiled_scratch_floats(n, d) floats.
void tiled_forward_head(int64_t n, int64_t d, float scale, const float* q, const float* k, const float* v,
                        int64_t ld, float* out, int64_t ldo, float* lse, float* probs, float* scratch);

// One (batch, head) of the backward: grad_out (n x d, row stride ldo), lse from the forward and
// P from it if saved (else null: recomputed from q, k and lse); writes dq, dk, dv (n x d, row stride ld).
void tiled_backward_head(int64_t n, int64_t d, float scale, const float* q, const float* k, const float* v,
                         int64_t ld, const float* grad_out, int64_t ldo, const float* lse, const float* probs,
                         float* dq, float* dk, float* dv, float* scratch);

}  // namespace ebsparse::attention
