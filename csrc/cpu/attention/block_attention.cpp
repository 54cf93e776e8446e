// Block-sparse attention on the CPU, flash-style (never materialises the N x N scores): for every
// (batch, head, query block) the kept key blocks of its layout row are visited in runs of
// consecutive blocks (one GEMM per run, at most kMaxRunKeys keys), with an online softmax.
//
//   O = softmax(scale * Q K^T + M) V,  M[r, c] = 0 where layout[r / bs, c / bs], -inf elsewhere;
//   a row with no kept key (all -inf) has O = 0 and lse = -inf (defined, no NaN).
// lse (B, H, N) in the inputs' dtype. Backward (per (batch, head), so each task owns its dK/dV): P = exp(scale * Q K^T - lse),
//   dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ += scale dS K, dK += scale dS^T Q.
//
// GEMMs and the AVX2 exp of fp32 scores: attention_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention_math.h"

namespace ebsparse {
namespace {

using attention::ab;
using attention::abt;
using attention::atb;
using attention::exp_sub;
using attention::row_max;

constexpr int64_t kMaxRunKeys = 512;

// Runs of consecutive kept key blocks of one layout row: [first block, block count), capped so a
// run holds at most kMaxRunKeys keys.
struct Run {
  int64_t block, count;
};

std::vector<Run> runs_of(const int32_t* cols, int64_t n, int64_t bs) {
  std::vector<Run> runs;
  const int64_t cap = std::max<int64_t>(1, kMaxRunKeys / bs);
  for (int64_t i = 0; i < n; ++i) {
    if (!runs.empty() && runs.back().block + runs.back().count == cols[i] && runs.back().count < cap) {
      ++runs.back().count;
    } else {
      runs.push_back({cols[i], 1});
    }
  }
  return runs;
}

struct Geometry {
  int64_t batch, heads, n, d, bs, nbq, layout_heads;
};

Geometry geometry(const at::Tensor& q, const at::Tensor& crow, int64_t bs) {
  Geometry g{q.size(0), q.size(1), q.size(2), q.size(3), bs, (q.size(2) + bs - 1) / bs, 0};
  g.layout_heads = crow.size(0);
  return g;
}

template <typename T>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& crow,
                    const at::Tensor& col, int64_t bs, double scale, at::Tensor& out, at::Tensor& lse) {
  const Geometry g = geometry(q, crow, bs);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int32_t* cp = crow.data_ptr<int32_t>();
  const int32_t* ip = col.data_ptr<int32_t>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, g.batch * g.heads * g.nbq, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s(g.bs * kMaxRunKeys), acc(g.bs * g.d), mx(g.bs), sum(g.bs);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task % g.nbq, bh = task / g.nbq, h = bh % g.heads;
      const int64_t lh = g.layout_heads == 1 ? 0 : h;
      const int32_t* row = cp + lh * (g.nbq + 1);
      const int64_t r0 = i * g.bs, m = std::min(g.bs, g.n - r0);
      const int64_t base = bh * g.n * g.d;
      std::fill(acc.begin(), acc.begin() + m * g.d, T(0));
      std::fill(mx.begin(), mx.begin() + m, ninf);
      std::fill(sum.begin(), sum.begin() + m, T(0));
      for (const Run& run : runs_of(ip + row[i], row[i + 1] - row[i], g.bs)) {
        const int64_t c0 = run.block * g.bs, nk = std::min(run.count * g.bs, g.n - c0);
        if (nk <= 0) continue;
        abt<T>(m, nk, g.d, T(scale), qp + base + r0 * g.d, g.d, kp + base + c0 * g.d, g.d, s.data(), nk);
        for (int64_t r = 0; r < m; ++r) {
          T* sr = s.data() + r * nk;
          T rowmax = row_max(sr, nk);
          const T mnew = std::max(mx[r], rowmax);
          const T corr = mx[r] == ninf ? T(0) : std::exp(mx[r] - mnew);
          sum[r] = sum[r] * corr + exp_sub(sr, nk, mnew);
          if (corr != T(1)) {
            T* ar = acc.data() + r * g.d;
            for (int64_t c = 0; c < g.d; ++c) ar[c] *= corr;
          }
          mx[r] = mnew;
        }
        ab<T>(m, nk, g.d, T(1), s.data(), nk, vp + base + c0 * g.d, g.d, T(1), acc.data(), g.d);
      }
      for (int64_t r = 0; r < m; ++r) {
        T* orow = op + base + (r0 + r) * g.d;
        const T inv = sum[r] > 0 ? T(1) / sum[r] : T(0);
        for (int64_t c = 0; c < g.d; ++c) orow[c] = acc[r * g.d + c] * inv;
        lp[bh * g.n + r0 + r] = sum[r] > 0 ? mx[r] + std::log(sum[r]) : ninf;
      }
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, const at::Tensor& crow, const at::Tensor& col,
                     int64_t bs, double scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const Geometry g = geometry(q, crow, bs);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* op = out.data_ptr<T>();
  const T* gp = grad_out.data_ptr<T>();
  const T* lp = lse.data_ptr<T>();
  const int32_t* cp = crow.data_ptr<int32_t>();
  const int32_t* ip = col.data_ptr<int32_t>();
  T* dqp = dq.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  T* dvp = dv.data_ptr<T>();
  at::parallel_for(0, g.batch * g.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p(g.bs * kMaxRunKeys), dp(g.bs * kMaxRunKeys), delta(g.n);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t h = bh % g.heads, lh = g.layout_heads == 1 ? 0 : h;
      const int32_t* row = cp + lh * (g.nbq + 1);
      const int64_t base = bh * g.n * g.d;
      for (int64_t r = 0; r < g.n; ++r) {
        T acc = 0;
        for (int64_t c = 0; c < g.d; ++c) acc += gp[base + r * g.d + c] * op[base + r * g.d + c];
        delta[r] = acc;
      }
      for (int64_t i = 0; i < g.nbq; ++i) {
        const int64_t r0 = i * g.bs, m = std::min(g.bs, g.n - r0);
        const T* qi = qp + base + r0 * g.d;
        const T* gi = gp + base + r0 * g.d;
        for (const Run& run : runs_of(ip + row[i], row[i + 1] - row[i], g.bs)) {
          const int64_t c0 = run.block * g.bs, nk = std::min(run.count * g.bs, g.n - c0);
          if (nk <= 0) continue;
          abt<T>(m, nk, g.d, T(scale), qi, g.d, kp + base + c0 * g.d, g.d, p.data(), nk);
          for (int64_t r = 0; r < m; ++r) {
            const T l = lp[bh * g.n + r0 + r];
            T* pr = p.data() + r * nk;
            if (std::isinf(l)) {
              std::fill(pr, pr + nk, T(0));
            } else {
              exp_sub(pr, nk, l);
            }
          }
          atb<T>(m, nk, g.d, T(1), p.data(), nk, gi, g.d, T(1), dvp + base + c0 * g.d, g.d);
          abt<T>(m, nk, g.d, T(1), gi, g.d, vp + base + c0 * g.d, g.d, dp.data(), nk);
          for (int64_t r = 0; r < m; ++r) {
            T* pr = p.data() + r * nk;
            const T* dpr = dp.data() + r * nk;
            const T dl = delta[r0 + r];
            for (int64_t c = 0; c < nk; ++c) pr[c] *= dpr[c] - dl;
          }
          ab<T>(m, nk, g.d, T(scale), p.data(), nk, kp + base + c0 * g.d, g.d, T(1), dqp + base + r0 * g.d, g.d);
          atb<T>(m, nk, g.d, T(scale), p.data(), nk, qi, g.d, T(1), dkp + base + c0 * g.d, g.d);
        }
      }
    }
  });
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& crow,
                  const at::Tensor& col, int64_t bs) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "query: expected float32 or float64, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 4 && q.is_contiguous() && q.device().is_cpu(),
              "query: expected a contiguous (B, H, N, D) CPU tensor, got ", q.sizes());
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() && t->is_contiguous(),
                "key/value: expected contiguous tensors like query ", q.sizes(), ", got ", t->sizes());
  }
  TORCH_CHECK(bs >= 1, "block_size: expected >= 1, got ", bs);
  const int64_t nb = (q.size(2) + bs - 1) / bs;
  TORCH_CHECK(crow.dim() == 2 && crow.scalar_type() == at::kInt && crow.size(1) == nb + 1 && crow.is_contiguous(),
              "crow: expected int32 (layout heads, ", nb + 1, "), got ", crow.sizes());
  TORCH_CHECK(crow.size(0) == 1 || crow.size(0) == q.size(1), "crow: expected 1 or ", q.size(1),
              " layout heads, got ", crow.size(0));
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kInt && col.is_contiguous(), "col: expected 1-D int32");
  const int32_t* cp = crow.data_ptr<int32_t>();
  const int32_t* ip = col.data_ptr<int32_t>();
  int64_t prev_end = 0;
  for (int64_t h = 0; h < crow.size(0); ++h) {
    const int32_t* row = cp + h * (nb + 1);
    TORCH_CHECK(row[0] == prev_end, "crow: layout head ", h, " must start where the previous ends");
    for (int64_t i = 0; i < nb; ++i) {
      TORCH_CHECK(row[i] <= row[i + 1] && row[i + 1] <= col.numel(), "crow: must not decrease, end <= nnz");
      for (int64_t j = row[i]; j < row[i + 1]; ++j) {
        TORCH_CHECK(ip[j] >= 0 && ip[j] < nb && (j == row[i] || ip[j] > ip[j - 1]),
                    "col: block columns must increase within a row and lie in [0, ", nb, ")");
      }
    }
    prev_end = row[nb];
  }
}

std::tuple<at::Tensor, at::Tensor> block_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& crow, const at::Tensor& col,
                                                       int64_t block_size, double scale) {
  check_inputs(q, k, v, crow, col, block_size);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "block_attention", [&] {
    forward_kernel<scalar_t>(q, k, v, crow, col, block_size, scale, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& crow, const at::Tensor& col, int64_t block_size, double scale) {
  check_inputs(q, k, v, crow, col, block_size);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes() && grad_out.is_contiguous() &&
                  out.is_contiguous() && grad_out.scalar_type() == q.scalar_type(),
              "grad_out/out: expected contiguous tensors like query");
  TORCH_CHECK(lse.scalar_type() == q.scalar_type() && lse.is_contiguous() && lse.numel() == q.numel() / q.size(3),
              "lse: expected the forward's (B, H, N) log-sum-exp in the query's dtype");
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "block_attention_backward", [&] {
    backward_kernel<scalar_t>(grad_out, q, k, v, out, lse, crow, col, block_size, scale, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("block_attention", &block_attention_cpu);
  m.impl("block_attention_backward", &block_attention_backward_cpu);
}

}  // namespace ebsparse
