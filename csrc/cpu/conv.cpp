// Direct sparse convolution on the CPU (CSR over the (Co, Ci*KH*KW) weight, read in place).
// PLACEHOLDER scalar loops: correct, parallel, not yet fast.
#include <ATen/Parallel.h>

#include "../ebsparse.h"

namespace ebsparse {

namespace {
struct Geometry {
  int64_t N, Ci, H, W, Co, KH, KW, Ho, Wo, sh, sw, ph, pw, dh, dw;
};

Geometry geometry(at::IntArrayRef in, at::IntArrayRef wt, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  Geometry g{in[0], in[1], in[2], in[3], wt[0], wt[2], wt[3], 0, 0,
             stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]};
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "input: spatial size (", g.H, ", ", g.W,
              ") is too small for the kernel, padding and dilation");
  return g;
}
}  // namespace

at::Tensor csr_conv2d(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation) {
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const Geometry g = geometry(x.sizes(), w.sizes(), stride, padding, dilation);
  auto y = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options());
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->contiguous().data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.Co, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = b / g.Co, co = b % g.Co;
        scalar_t* out = yp + b * g.Ho * g.Wo;
        for (int64_t i = 0; i < g.Ho * g.Wo; ++i) out[i] = bp ? bp[co] : scalar_t(0);
        for (int32_t j = rp[co]; j < rp[co + 1]; ++j) {
          const int64_t c = ci[j] / KK, kh = (ci[j] % KK) / g.KW, kw = ci[j] % g.KW;
          const scalar_t v = wp[co * Kc + ci[j]];
          const scalar_t* in = xp + (n * g.Ci + c) * g.H * g.W;
          for (int64_t oy = 0; oy < g.Ho; ++oy) {
            const int64_t iy = oy * g.sh - g.ph + kh * g.dh;
            if (iy < 0 || iy >= g.H) continue;
            for (int64_t ox = 0; ox < g.Wo; ++ox) {
              const int64_t ix = ox * g.sw - g.pw + kw * g.dw;
              if (ix >= 0 && ix < g.W) out[oy * g.Wo + ox] += v * in[iy * g.W + ix];
            }
          }
        }
      }
    });
  });
  return y;
}

at::Tensor csr_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                 at::IntArrayRef input_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  auto dy = grad_output.contiguous();
  auto w = weight.contiguous();
  const Geometry g = geometry(input_size, w.sizes(), stride, padding, dilation);
  TORCH_CHECK(dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_output: expected spatial size (", g.Ho,
              ", ", g.Wo, "), got ", dy.sizes());
  auto dx = at::zeros({g.N, g.Ci, g.H, g.W}, dy.options());
  const int32_t* cp = col_ptr.data_ptr<int32_t>();
  const int32_t* ri = row_idx.data_ptr<int32_t>();
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_conv2d_grad_input", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.Ci, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = b / g.Ci, c = b % g.Ci;
        scalar_t* in = dxp + b * g.H * g.W;
        for (int64_t col = c * KK; col < (c + 1) * KK; ++col) {
          const int64_t kh = (col % KK) / g.KW, kw = col % g.KW;
          for (int32_t j = cp[col]; j < cp[col + 1]; ++j) {
            const int64_t co = ri[j];
            const scalar_t v = wp[co * Kc + col];
            const scalar_t* out = dyp + (n * g.Co + co) * g.Ho * g.Wo;
            for (int64_t oy = 0; oy < g.Ho; ++oy) {
              const int64_t iy = oy * g.sh - g.ph + kh * g.dh;
              if (iy < 0 || iy >= g.H) continue;
              for (int64_t ox = 0; ox < g.Wo; ++ox) {
                const int64_t ix = ox * g.sw - g.pw + kw * g.dw;
                if (ix >= 0 && ix < g.W) in[iy * g.W + ix] += v * out[oy * g.Wo + ox];
              }
            }
          }
        }
      }
    });
  });
  return dx;
}

at::Tensor csr_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                  at::IntArrayRef weight_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  auto dy = grad_output.contiguous();
  auto x = input.contiguous();
  const Geometry g = geometry(x.sizes(), weight_size, stride, padding, dilation);
  TORCH_CHECK(dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_output: expected spatial size (", g.Ho,
              ", ", g.Wo, "), got ", dy.sizes());
  auto dw = at::zeros(weight_size, x.options());
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_grad_weight", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* dwp = dw.data_ptr<scalar_t>();
    at::parallel_for(0, g.Co, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t co = c0; co < c1; ++co)
        for (int32_t j = rp[co]; j < rp[co + 1]; ++j) {
          const int64_t c = ci[j] / KK, kh = (ci[j] % KK) / g.KW, kw = ci[j] % g.KW;
          scalar_t acc = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* in = xp + (n * g.Ci + c) * g.H * g.W;
            const scalar_t* out = dyp + (n * g.Co + co) * g.Ho * g.Wo;
            for (int64_t oy = 0; oy < g.Ho; ++oy) {
              const int64_t iy = oy * g.sh - g.ph + kh * g.dh;
              if (iy < 0 || iy >= g.H) continue;
              for (int64_t ox = 0; ox < g.Wo; ++ox) {
                const int64_t ix = ox * g.sw - g.pw + kw * g.dw;
                if (ix >= 0 && ix < g.W) acc += out[oy * g.Wo + ox] * in[iy * g.W + ix];
              }
            }
          }
          dwp[co * Kc + ci[j]] = acc;
        }
    });
  });
  return dw;
}

}  // namespace ebsparse
