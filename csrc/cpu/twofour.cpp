// 2:4 semi-structured pattern helpers on the CPU: magnitude prune, compress, decompress.
#include <ATen/Parallel.h>
#include <cmath>
#include <torch/library.h>

#include "ebsparse.h"

namespace ebsparse {

namespace {
void check_2_4_weight(const at::Tensor& weight, const char* name) {
  TORCH_CHECK(weight.dim() >= 2, name, ": expected at least 2 dims (M, K, ...), got ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), name, ": expected a floating-point tensor, got ", weight.scalar_type());
}
}  // namespace

at::Tensor prune_2_4(const at::Tensor& weight) {
  check_2_4_weight(weight, "weight");
  auto w = weight.reshape({weight.size(0), -1}).contiguous().to(at::kFloat);
  const int64_t M = w.size(0), K = w.size(1);
  TORCH_CHECK(K % 4 == 0, "weight: the kept dimension (", K, ") must be a multiple of 4 for 2:4");
  auto mask = at::zeros({M, K}, weight.options().dtype(at::kBool));
  const float* wp = w.data_ptr<float>();
  bool* mp = mask.data_ptr<bool>();
  at::parallel_for(0, M * (K / 4), 1024, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const float* v = wp + g * 4;
      int best = 0, second = -1;
      for (int i = 1; i < 4; ++i)
        if (std::fabs(v[i]) > std::fabs(v[best])) best = i;
      for (int i = 0; i < 4; ++i)
        if (i != best && (second < 0 || std::fabs(v[i]) > std::fabs(v[second]))) second = i;
      mp[g * 4 + best] = true;
      mp[g * 4 + second] = true;
    }
  });
  return mask.view(weight.sizes());
}

std::tuple<at::Tensor, at::Tensor> compress_2_4(const at::Tensor& weight, const at::Tensor& mask) {
  TORCH_CHECK(weight.dim() == 2, "weight: expected (M, K), got ", weight.sizes());
  TORCH_CHECK(mask.sizes() == weight.sizes() && mask.scalar_type() == at::kBool,
              "mask: expected a bool tensor of shape ", weight.sizes(), ", got ", mask.scalar_type(), " ", mask.sizes());
  const int64_t M = weight.size(0), K = weight.size(1);
  TORCH_CHECK(K % 4 == 0, "weight: K (", K, ") must be a multiple of 4 for 2:4");
  auto w = weight.contiguous();
  auto mk = mask.contiguous();
  auto values = at::empty({M, K / 2}, weight.options());
  auto meta = at::empty({M, K / 4}, weight.options().dtype(at::kByte));
  const bool* mp = mk.data_ptr<bool>();
  uint8_t* meta_p = meta.data_ptr<uint8_t>();
  // Check every group first so a bad mask raises before anything is written.
  for (int64_t g = 0; g < M * (K / 4); ++g) {
    int kept = mp[4 * g] + mp[4 * g + 1] + mp[4 * g + 2] + mp[4 * g + 3];
    TORCH_CHECK(kept == 2, "mask: expected exactly 2 kept of every 4 consecutive entries, group ", g,
                " (row ", g / (K / 4), ") keeps ", kept);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "compress_2_4", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* vp = values.data_ptr<scalar_t>();
    at::parallel_for(0, M * (K / 4), 1024, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        int slot = 0;
        uint8_t code = 0;
        for (int i = 0; i < 4; ++i) {
          if (mp[4 * g + i]) {
            vp[2 * g + slot] = wp[4 * g + i];
            code |= static_cast<uint8_t>(i << (2 * slot));
            ++slot;
          }
        }
        meta_p[g] = code;
      }
    });
  });
  return {values, meta};
}

at::Tensor decompress_2_4(const at::Tensor& values, const at::Tensor& meta) {
  TORCH_CHECK(values.dim() == 2, "values: expected (M, K/2), got ", values.sizes());
  TORCH_CHECK(meta.dim() == 2 && meta.scalar_type() == at::kByte && meta.size(0) == values.size(0) &&
                  meta.size(1) * 2 == values.size(1),
              "meta: expected a uint8 tensor of shape (", values.size(0), ", ", values.size(1) / 2,
              "), got ", meta.scalar_type(), " ", meta.sizes());
  const int64_t M = values.size(0), G = meta.size(1);
  auto v = values.contiguous();
  auto mt = meta.contiguous();
  auto out = at::zeros({M, 4 * G}, values.options());
  const uint8_t* mp = mt.data_ptr<uint8_t>();
  for (int64_t g = 0; g < M * G; ++g) {
    int a = mp[g] & 3, b = (mp[g] >> 2) & 3;
    TORCH_CHECK(a < b && (mp[g] >> 4) == 0, "meta: entry ", g, " (", int(mp[g]),
                ") is not a valid 2:4 code (two increasing 2-bit positions)");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "decompress_2_4", [&] {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, M * G, 1024, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        op[4 * g + (mp[g] & 3)] = vp[2 * g];
        op[4 * g + ((mp[g] >> 2) & 3)] = vp[2 * g + 1];
      }
    });
  });
  return out;
}

}  // namespace ebsparse

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("prune_2_4", &ebsparse::prune_2_4);
  m.impl("compress_2_4", &ebsparse::compress_2_4);
  m.impl("decompress_2_4", &ebsparse::decompress_2_4);
}
