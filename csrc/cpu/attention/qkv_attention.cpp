// Dense multi-head self-attention read from a fused qkv projection, for short sequences on the CPU.
//
//   qkv (B, N, 3 * H * D) token-major, as the fused linear writes it: token t's q of head h is
//   qkv[b, t, h*D : (h+1)*D], its k at + H*D, its v at + 2*H*D.
//   out[b, t, h*D : (h+1)*D] = (softmax(scale * Q K^T) V)[t] for Q, K, V of (b, h)   (B, N, H * D)
//   lse[b, h, t] = log sum_s exp(scale * q_t . k_s)                                    (B, H, N)
//   probs[b, h] = P = softmax(scale * Q K^T), when saved (see below), else an empty tensor (B, H, N, N)
// Backward, the same per-(b, h) products with P read from probs or recomputed as exp(scale * Q K^T - lse):
//   dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = scale dS K, dK = scale dS^T Q,
// each written once, in place, into d(qkv) (B, N, 3 * H * D) in qkv's layout.
//
// Why: the unbind/transpose/SDPA/transpose path copies q, k, v and the output around SDPA and stacks
// dq, dk, dv into d(qkv) with a cat; here every GEMM reads and writes the token-major tensors in
// place through its row stride (attention_math.h), so nothing is copied. One task per (b, h) holds
// the whole N x N score matrix (no online softmax): meant for N up to a few hundred (the Python op
// sends longer sequences to SDPA). rowsum(P * dP) equals rowsum(dO * O), so the output need not be
// saved. lse is always saved (B*H*N values); P (B*H*N*N) only when the caller asks (save_probs:
// a backward will run) and the float32 AVX-512 kernel runs with N <= kSaveProbsMaxTokens: there P
// is no bigger than the output (N <= D at DiT's widths) and reading it back spares the backward one
// of its five products, its transposed K and N*N exps (measured in bench/NOTES.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "attention_math.h"
#include "cpu/capability.h"
#include "cpu/tasks.h"
#include "qkv_attention_tiled.h"

namespace ebsparse {
namespace {

using attention::ab;
using attention::abt;
using attention::atb;
using attention::exp_sub;
using attention::row_max;

struct Shape {
  int64_t batch, n, heads, d;
  int64_t ld_qkv() const { return 3 * heads * d; }
  int64_t ld_out() const { return heads * d; }
  // Offset of (b, h)'s q rows in qkv (k and v follow at + H*D and + 2*H*D).
  int64_t qkv_offset(int64_t bh) const { return (bh / heads) * n * ld_qkv() + (bh % heads) * d; }
  int64_t out_offset(int64_t bh) const { return (bh / heads) * n * ld_out() + (bh % heads) * d; }
};

// float32 on AVX-512 runs qkv_attention_tiled.h's heads (own register-tiled products); float64 and
// AVX2 the sgemm_/dgemm_ path below. The one place that choice is made (also reported by the
// qkv_attention_cpu_kernel op, so tests can name the path they exercise).
bool runs_tiled(at::ScalarType dtype) {
  return dtype == at::kFloat && cpu_capability() == CpuCapability::kAvx512;
}

constexpr int64_t kSaveProbsMaxTokens = 64;

// head(bh, scratch) for every (batch, head), each thread with one scratch buffer for all its heads.
// With several samples a thread, a task is one sample's heads, handed out dynamically (cpu/tasks.h):
// a static split idles one thread whenever the other's core is descheduled on a shared machine.
// Tasks stay whole samples: heads of one sample handed to different threads share the cache lines
// around each head's row segments, and such an interleaving measured 40% slower. Fewer samples: the
// heads split statically in contiguous ranges.
template <class F>
void for_heads(const Shape& g, F&& head) {
  const int64_t nt = at::get_num_threads();
  if (g.batch >= 4 * nt) {
    std::vector<std::vector<float>> scratch(nt);
    run_tasks(g.batch, [&](int64_t b, int64_t tid) {
      std::vector<float>& mine = scratch[tid];
      if (mine.empty()) mine.resize(attention::tiled_scratch_floats(g.n, g.d));
      for (int64_t bh = b * g.heads; bh < (b + 1) * g.heads; ++bh) head(bh, mine.data());
    });
    return;
  }
  at::parallel_for(0, g.batch * g.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> mine(attention::tiled_scratch_floats(g.n, g.d));
    for (int64_t bh = begin; bh < end; ++bh) head(bh, mine.data());
  });
}

void tiled_forward(const Shape& g, double scale, const float* qkv, float* out, float* lse, float* probs) {
  const int64_t n = g.n, d = g.d, ld = g.ld_qkv(), hd = g.heads * g.d;
  for_heads(g, [&](int64_t bh, float* scratch) {
    const float* q = qkv + g.qkv_offset(bh);
    attention::tiled_forward_head(n, d, float(scale), q, q + hd, q + 2 * hd, ld, out + g.out_offset(bh), g.ld_out(),
                                  lse + bh * n, probs ? probs + bh * n * n : nullptr, scratch);
  });
}

void tiled_backward(const Shape& g, double scale, const float* grad_out, const float* qkv, const float* lse,
                    const float* probs, float* dqkv) {
  const int64_t n = g.n, d = g.d, ld = g.ld_qkv(), hd = g.heads * g.d;
  for_heads(g, [&](int64_t bh, float* scratch) {
    const float* q = qkv + g.qkv_offset(bh);
    float* dq = dqkv + g.qkv_offset(bh);
    attention::tiled_backward_head(n, d, float(scale), q, q + hd, q + 2 * hd, ld, grad_out + g.out_offset(bh),
                                   g.ld_out(), lse + bh * n, probs ? probs + bh * n * n : nullptr, dq, dq + hd,
                                   dq + 2 * hd, scratch);
  });
}

template <typename T>
void forward_kernel(const Shape& g, double scale, const T* qkv, T* out, T* lse) {
  const int64_t n = g.n, d = g.d, ld = g.ld_qkv(), hd = g.heads * g.d;
  at::parallel_for(0, g.batch * g.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s(n * n);
    for (int64_t bh = begin; bh < end; ++bh) {
      const T* q = qkv + g.qkv_offset(bh);
      abt<T>(n, n, d, T(scale), q, ld, q + hd, ld, s.data(), n);
      for (int64_t r = 0; r < n; ++r) {
        T* sr = s.data() + r * n;
        const T mx = row_max(sr, n);
        const T sum = exp_sub(sr, n, mx);  // >= 1: the max's own term
        const T inv = T(1) / sum;
#pragma omp simd
        for (int64_t c = 0; c < n; ++c) sr[c] *= inv;
        lse[bh * n + r] = mx + std::log(sum);
      }
      ab<T>(n, n, d, T(1), s.data(), n, q + 2 * hd, ld, T(0), out + g.out_offset(bh), g.ld_out());
    }
  });
}

template <typename T>
void backward_kernel(const Shape& g, double scale, const T* grad_out, const T* qkv, const T* lse, const T* probs,
                     T* dqkv) {
  const int64_t n = g.n, d = g.d, ld = g.ld_qkv(), hd = g.heads * g.d, ldo = g.ld_out();
  at::parallel_for(0, g.batch * g.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p(n * n), dp(n * n);
    for (int64_t bh = begin; bh < end; ++bh) {
      const T* q = qkv + g.qkv_offset(bh);
      const T *k = q + hd, *v = q + 2 * hd;
      const T* go = grad_out + g.out_offset(bh);
      T* dq = dqkv + g.qkv_offset(bh);
      T *dk = dq + hd, *dv = dq + 2 * hd;
      if (probs) {
        std::copy(probs + bh * n * n, probs + (bh + 1) * n * n, p.data());
      } else {
        abt<T>(n, n, d, T(scale), q, ld, k, ld, p.data(), n);
        for (int64_t r = 0; r < n; ++r) exp_sub(p.data() + r * n, n, lse[bh * n + r]);
      }
      atb<T>(n, n, d, T(1), p.data(), n, go, ldo, T(0), dv, ld);
      abt<T>(n, n, d, T(1), go, ldo, v, ld, dp.data(), n);
      for (int64_t r = 0; r < n; ++r) {
        T* pr = p.data() + r * n;
        const T* dpr = dp.data() + r * n;
        T delta = 0;
#pragma omp simd reduction(+ : delta)
        for (int64_t c = 0; c < n; ++c) delta += pr[c] * dpr[c];
#pragma omp simd
        for (int64_t c = 0; c < n; ++c) pr[c] *= dpr[c] - delta;
      }
      ab<T>(n, n, d, T(scale), p.data(), n, k, ld, T(0), dq, ld);
      atb<T>(n, n, d, T(scale), p.data(), n, q, ld, T(0), dk, ld);
    }
  });
}

Shape check_qkv(const at::Tensor& qkv, int64_t heads) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kDouble,
              "qkv: expected float32 or float64, got ", qkv.scalar_type());
  TORCH_CHECK(qkv.dim() == 3 && qkv.is_contiguous() && qkv.device().is_cpu(),
              "qkv: expected a contiguous (batch, tokens, 3 * heads * head_dim) CPU tensor, got ", qkv.sizes());
  TORCH_CHECK(heads >= 1 && qkv.size(2) % (3 * heads) == 0 && qkv.size(2) > 0, "num_heads: expected a positive divisor of ",
              "qkv.size(2) / 3 = ", qkv.size(2) / 3.0, ", got ", heads);
  return Shape{qkv.size(0), qkv.size(1), heads, qkv.size(2) / (3 * heads)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_attention_cpu(const at::Tensor& qkv, int64_t num_heads, double scale,
                                                                  bool save_probs) {
  const Shape g = check_qkv(qkv, num_heads);
  at::Tensor out = at::empty({g.batch, g.n, g.heads * g.d}, qkv.options());
  at::Tensor lse = at::empty({g.batch, g.heads, g.n}, qkv.options());
  const bool tiled = runs_tiled(qkv.scalar_type());
  const bool keep_probs = save_probs && tiled && g.n <= kSaveProbsMaxTokens;
  at::Tensor probs = keep_probs ? at::empty({g.batch, g.heads, g.n, g.n}, qkv.options()) : at::empty({0}, qkv.options());
  if (out.numel() == 0) return {out, lse, probs};
  if (tiled) {
    tiled_forward(g, scale, qkv.data_ptr<float>(), out.data_ptr<float>(), lse.data_ptr<float>(),
                  keep_probs ? probs.data_ptr<float>() : nullptr);
    return {out, lse, probs};
  }
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "qkv_attention", [&] {
    forward_kernel<scalar_t>(g, scale, qkv.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out, lse, probs};
}

at::Tensor qkv_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& lse,
                                      const std::optional<at::Tensor>& probs, int64_t num_heads, double scale) {
  const Shape g = check_qkv(qkv, num_heads);
  TORCH_CHECK(grad_out.scalar_type() == qkv.scalar_type() && grad_out.is_contiguous() &&
                  grad_out.sizes() == at::IntArrayRef({g.batch, g.n, g.heads * g.d}),
              "grad_out: expected a contiguous (", g.batch, ", ", g.n, ", ", g.heads * g.d, ") tensor of qkv's dtype, got ",
              grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK(lse.scalar_type() == qkv.scalar_type() && lse.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({g.batch, g.heads, g.n}),
              "lse: expected the forward's contiguous (", g.batch, ", ", g.heads, ", ", g.n,
              ") log-sum-exp in qkv's dtype, got ", lse.sizes());
  // An empty probs (what the forward returns when it did not save P) means: recompute P.
  const bool has_probs = probs.has_value() && probs->numel() > 0;
  if (has_probs)
    TORCH_CHECK(probs->scalar_type() == qkv.scalar_type() && probs->is_contiguous() &&
                    probs->sizes() == at::IntArrayRef({g.batch, g.heads, g.n, g.n}),
                "probs: expected the forward's contiguous (", g.batch, ", ", g.heads, ", ", g.n, ", ", g.n,
                ") probabilities in qkv's dtype, or an empty tensor or None, got ", probs->sizes(), " ",
                probs->scalar_type());
  at::Tensor dqkv = at::empty_like(qkv);
  if (dqkv.numel() == 0) return dqkv;
  if (runs_tiled(qkv.scalar_type())) {
    tiled_backward(g, scale, grad_out.data_ptr<float>(), qkv.data_ptr<float>(), lse.data_ptr<float>(),
                   has_probs ? probs->data_ptr<float>() : nullptr, dqkv.data_ptr<float>());
    return dqkv;
  }
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "qkv_attention_backward", [&] {
    backward_kernel<scalar_t>(g, scale, grad_out.data_ptr<scalar_t>(), qkv.data_ptr<scalar_t>(),
                              lse.data_ptr<scalar_t>(), has_probs ? probs->data_ptr<scalar_t>() : nullptr,
                              dqkv.data_ptr<scalar_t>());
  });
  return dqkv;
}

std::string qkv_attention_cpu_kernel(const at::Tensor& qkv) {
  return runs_tiled(qkv.scalar_type()) ? "tiled-avx512" : "blas";
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("qkv_attention_cpu_kernel", &qkv_attention_cpu_kernel);
  m.impl("qkv_attention", &qkv_attention_cpu);
  m.impl("qkv_attention_backward", &qkv_attention_backward_cpu);
}

}  // namespace ebsparse
