// Kernel bodies of adaln.h's RowKernels, written once against a vector adapter `Vec` (simd_vec.h's
// Avx2 / Avx512, or kernels_f64.cpp's one-lane double) and its element type `Real`, included by
// kernels_<isa>.cpp inside a namespace of its own. Internal linkage throughout (see simd_vec.h).
//
// Every kernel reads each input row once from memory: a row (C values, 1.5 KB at DiT-S) stays in L1
// between the passes over it, so the statistics pass, the sums of the backward and the output pass
// cost one trip to DRAM together. Whole vectors first, then the C % W tail lane by lane.

namespace {

using V = typename Vec::T;

inline int64_t vec_end(int64_t C) { return C - C % Vec::W; }

void norm_modulate_forward(const Real* x, const Real* shift, const Real* scale, Real* y, Real* mean, Real* rstd,
                           int64_t rows, int64_t C, double eps) {
  const int64_t cv = vec_end(C);
  for (int64_t r = 0; r < rows; ++r) {
    const Real* xr = x + r * C;
    Real* yr = y + r * C;
    V acc = Vec::zero();
    for (int64_t c = 0; c < cv; c += Vec::W) acc = Vec::add(acc, Vec::loadu(xr + c));
    Real sum = Vec::hsum(acc);
    for (int64_t c = cv; c < C; ++c) sum += xr[c];
    const Real mu = sum / Real(C);
    // Second pass over d = x - mu: the squared deviations (two passes: exact where E[x^2] - mean^2
    // would cancel), and sum(d) / C, the part of the mean that rounding mu lost. A row of spread
    // 0.01 around 5 would lose ~5e-5 of each normalised value to mu's rounding alone.
    const V m = Vec::bcast(mu);
    V ad = Vec::zero();
    acc = Vec::zero();
    for (int64_t c = 0; c < cv; c += Vec::W) {
      const V d = Vec::sub(Vec::loadu(xr + c), m);
      ad = Vec::add(ad, d);
      acc = Vec::fma(d, d, acc);
    }
    Real sd = Vec::hsum(ad), sq = Vec::hsum(acc);
    for (int64_t c = cv; c < C; ++c) sd += xr[c] - mu, sq += (xr[c] - mu) * (xr[c] - mu);
    const Real delta = sd / Real(C);
    const Real var = std::max(sq / Real(C) - delta * delta, Real(0));
    const Real rs = Real(1) / std::sqrt(var + Real(eps));
    mean[r] = mu + delta, rstd[r] = rs;
    const V vd = Vec::bcast(delta), vr = Vec::bcast(rs);
    // y = t * (1 + scale) + shift = t * scale + (t + shift), t = (x - mean) * rstd
    for (int64_t c = 0; c < cv; c += Vec::W) {
      const V t = Vec::mul(Vec::sub(Vec::sub(Vec::loadu(xr + c), m), vd), vr);
      Vec::storeu(yr + c, Vec::fma(t, Vec::loadu(scale + c), Vec::add(t, Vec::loadu(shift + c))));
    }
    for (int64_t c = cv; c < C; ++c) {
      const Real t = ((xr[c] - mu) - delta) * rs;
      yr[c] = t * scale[c] + (t + shift[c]);
    }
  }
}

// With h = dy * (1 + scale) the gradient at the normalised row,
//   dx = rstd * (h - mean(h) - xhat * mean(h * xhat)).
void norm_modulate_backward(const Real* dy, const Real* x, const Real* mean, const Real* rstd, const Real* scale,
                            Real* dx, Real* dshift, Real* dscale, int64_t rows, int64_t C) {
  const int64_t cv = vec_end(C);
  for (int64_t r = 0; r < rows; ++r) {
    const Real* xr = x + r * C;
    const Real* gr = dy + r * C;
    Real* dxr = dx + r * C;
    const Real mu = mean[r], rs = rstd[r];
    const V m = Vec::bcast(mu), vr = Vec::bcast(rs);
    V a1 = Vec::zero(), a2 = Vec::zero();
    for (int64_t c = 0; c < cv; c += Vec::W) {
      const V g = Vec::loadu(gr + c), xh = Vec::mul(Vec::sub(Vec::loadu(xr + c), m), vr);
      const V h = Vec::fma(g, Vec::loadu(scale + c), g);
      a1 = Vec::add(a1, h);
      a2 = Vec::fma(h, xh, a2);
      Vec::storeu(dshift + c, Vec::add(Vec::loadu(dshift + c), g));
      Vec::storeu(dscale + c, Vec::fma(g, xh, Vec::loadu(dscale + c)));
    }
    Real s1 = Vec::hsum(a1), s2 = Vec::hsum(a2);
    for (int64_t c = cv; c < C; ++c) {
      const Real g = gr[c], xh = (xr[c] - mu) * rs, h = g * scale[c] + g;
      s1 += h, s2 += h * xh;
      dshift[c] += g, dscale[c] += g * xh;
    }
    // The differences before the product with rstd (up to 1/sqrt(eps)): h - mean(h) cancels exactly
    // where it should (a single channel), instead of leaving rstd times a rounding error.
    const Real m1 = s1 / Real(C), nm2 = -s2 / Real(C);
    const V vm1 = Vec::bcast(m1), vnm2 = Vec::bcast(nm2);
    for (int64_t c = 0; c < cv; c += Vec::W) {
      const V g = Vec::loadu(gr + c), xh = Vec::mul(Vec::sub(Vec::loadu(xr + c), m), vr);
      const V h = Vec::fma(g, Vec::loadu(scale + c), g);
      Vec::storeu(dxr + c, Vec::mul(vr, Vec::fma(xh, vnm2, Vec::sub(h, vm1))));
    }
    for (int64_t c = cv; c < C; ++c) {
      const Real g = gr[c], xh = (xr[c] - mu) * rs, h = g * scale[c] + g;
      dxr[c] = rs * (xh * nm2 + (h - m1));
    }
  }
}

void gated_forward(const Real* x, const Real* gate, const Real* branch, Real* out, int64_t rows, int64_t C) {
  const int64_t cv = vec_end(C);
  for (int64_t r = 0; r < rows; ++r) {
    const Real* xr = x + r * C;
    const Real* br = branch + r * C;
    Real* outr = out + r * C;
    for (int64_t c = 0; c < cv; c += Vec::W)
      Vec::storeu(outr + c, Vec::fma(Vec::loadu(gate + c), Vec::loadu(br + c), Vec::loadu(xr + c)));
    for (int64_t c = cv; c < C; ++c) outr[c] = gate[c] * br[c] + xr[c];
  }
}

void gated_backward(const Real* dout, const Real* branch, const Real* gate, Real* dbranch, Real* dgate, int64_t rows,
                    int64_t C) {
  const int64_t cv = vec_end(C);
  for (int64_t r = 0; r < rows; ++r) {
    const Real* gr = dout + r * C;
    const Real* br = branch + r * C;
    Real* dbr = dbranch + r * C;
    for (int64_t c = 0; c < cv; c += Vec::W) {
      const V g = Vec::loadu(gr + c);
      Vec::storeu(dbr + c, Vec::mul(g, Vec::loadu(gate + c)));
      Vec::storeu(dgate + c, Vec::fma(g, Vec::loadu(br + c), Vec::loadu(dgate + c)));
    }
    for (int64_t c = cv; c < C; ++c) {
      dbr[c] = gr[c] * gate[c];
      dgate[c] += gr[c] * br[c];
    }
  }
}

constexpr RowKernels<Real> kTable = {norm_modulate_forward, norm_modulate_backward, gated_forward, gated_backward};

}  // namespace
