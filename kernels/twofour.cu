// CUDA kernels and registration of the 2:4 semi-structured helpers: magnitude prune, compress,
// decompress. One thread per group of 4 consecutive entries along K of the (M, K) view; groups are
// contiguous in memory, so consecutive threads touch consecutive groups. Semantics and argument
// checks follow csrc/cpu/twofour.cpp exactly (including comparing magnitudes in float32).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>

#include "common.cuh"
#include "index.cuh"

namespace ebsparse::cuda {
namespace {

// Per group g of w (G groups of 4):
//   best   = argmax_i |w[4g+i]|            (the lowest i among equal magnitudes)
//   second = argmax_{i != best} |w[4g+i]|  (the lowest i among equal magnitudes)
//   mask[4g+i] = (i == best || i == second)
template <typename scalar_t>
__global__ void prune_2_4_kernel(const scalar_t* __restrict__ w, bool* __restrict__ mask, int64_t G) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x) {
    float a[4];
    for (int i = 0; i < 4; ++i) a[i] = fabsf(static_cast<float>(w[4 * g + i]));
    int best, second;
    index::two_four_select(a, best, second);
    for (int i = 0; i < 4; ++i) mask[4 * g + i] = (i == best || i == second);
  }
}

// Per group g, with kept positions p0 < p1 (mask has exactly two, checked before launch):
//   values[2g] = w[4g + p0], values[2g+1] = w[4g + p1], meta[g] = p0 | (p1 << 2)
template <typename scalar_t>
__global__ void compress_2_4_kernel(const scalar_t* __restrict__ w, const bool* __restrict__ mask,
                                    scalar_t* __restrict__ values, uint8_t* __restrict__ meta, int64_t G) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x) {
    const bool kept[4] = {mask[4 * g], mask[4 * g + 1], mask[4 * g + 2], mask[4 * g + 3]};
    int p0, p1;
    const int code = index::two_four_code(kept);  // a valid code: every group was checked on the host
    index::two_four_decode(static_cast<uint8_t>(code), p0, p1);
    values[2 * g] = w[4 * g + p0];
    values[2 * g + 1] = w[4 * g + p1];
    meta[g] = static_cast<uint8_t>(code);
  }
}

// Per group g, with p0 = meta[g] & 3 and p1 = (meta[g] >> 2) & 3 (valid codes checked before launch):
//   out[4g + p0] = values[2g], out[4g + p1] = values[2g+1], the other two entries 0
template <typename scalar_t>
__global__ void decompress_2_4_kernel(const scalar_t* __restrict__ values, const uint8_t* __restrict__ meta,
                                      scalar_t* __restrict__ out, int64_t G) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < G; g += int64_t(gridDim.x) * blockDim.x) {
    int p0, p1;
    index::two_four_decode(meta[g], p0, p1);  // valid: every code was checked on the host
    for (int i = 0; i < 4; ++i)
      out[4 * g + i] = i == p0 ? values[2 * g] : (i == p1 ? values[2 * g + 1] : static_cast<scalar_t>(0));
  }
}

at::Tensor prune_2_4_cuda(const at::Tensor& weight) {
  check_cuda(weight, "weight");
  TORCH_CHECK(weight.dim() >= 2, "weight: expected at least 2 dims (M, K, ...), got ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "weight: expected a floating-point tensor, got ", weight.scalar_type());
  const c10::cuda::CUDAGuard guard(weight.device());
  auto w = weight.reshape({weight.size(0), -1}).contiguous();
  const int64_t M = w.size(0), K = w.size(1);
  TORCH_CHECK(K % 4 == 0, "weight: the kept dimension (", K, ") must be a multiple of 4 for 2:4");
  auto mask = at::empty({M, K}, weight.options().dtype(at::kBool));
  const int64_t G = M * (K / 4);
  if (G > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "prune_2_4", [&] {
      prune_2_4_kernel<scalar_t><<<grid_1d(G), kThreads, 0, stream>>>(w.data_ptr<scalar_t>(),
                                                                       mask.data_ptr<bool>(), G);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return mask.view(weight.sizes());
}

std::tuple<at::Tensor, at::Tensor> compress_2_4_cuda(const at::Tensor& weight, const at::Tensor& mask) {
  check_cuda(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight: expected (M, K), got ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "weight: expected a floating-point tensor, got ", weight.scalar_type());
  TORCH_CHECK(mask.sizes() == weight.sizes() && mask.scalar_type() == at::kBool,
              "mask: expected a bool tensor of shape ", weight.sizes(), ", got ", mask.scalar_type(), " ", mask.sizes());
  TORCH_CHECK(mask.device() == weight.device(), "mask: expected device ", weight.device(), " (that of weight), got ",
              mask.device());
  const int64_t M = weight.size(0), K = weight.size(1);
  TORCH_CHECK(K % 4 == 0, "weight: K (", K, ") must be a multiple of 4 for 2:4");
  const c10::cuda::CUDAGuard guard(weight.device());
  auto w = weight.contiguous();
  auto mk = mask.contiguous();
  auto values = at::empty({M, K / 2}, weight.options());
  auto meta = at::empty({M, K / 4}, weight.options().dtype(at::kByte));
  const int64_t G = M * (K / 4);
  if (G == 0) return {values, meta};
  // Check every group first so a bad mask raises before anything is written (one host sync).
  auto kept = mk.view({G, 4}).sum(1);
  auto bad = kept.ne(2);
  if (bad.any().item<bool>()) {
    const int64_t g = bad.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "mask: expected exactly 2 kept of every 4 consecutive entries, group ", g, " (row ",
                g / (K / 4), ") keeps ", kept[g].item<int64_t>());
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "compress_2_4", [&] {
    compress_2_4_kernel<scalar_t><<<grid_1d(G), kThreads, 0, stream>>>(
        w.data_ptr<scalar_t>(), mk.data_ptr<bool>(), values.data_ptr<scalar_t>(), meta.data_ptr<uint8_t>(), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values, meta};
}

at::Tensor decompress_2_4_cuda(const at::Tensor& values, const at::Tensor& meta) {
  check_cuda(values, "values");
  TORCH_CHECK(values.dim() == 2, "values: expected (M, K/2), got ", values.sizes());
  TORCH_CHECK(values.is_floating_point(), "values: expected a floating-point tensor, got ", values.scalar_type());
  TORCH_CHECK(meta.dim() == 2 && meta.scalar_type() == at::kByte && meta.size(0) == values.size(0) &&
                  meta.size(1) * 2 == values.size(1),
              "meta: expected a uint8 tensor of shape (", values.size(0), ", ", values.size(1) / 2,
              "), got ", meta.scalar_type(), " ", meta.sizes());
  TORCH_CHECK(meta.device() == values.device(), "meta: expected device ", values.device(),
              " (that of values), got ", meta.device());
  const int64_t M = values.size(0), G = M * meta.size(1);
  const c10::cuda::CUDAGuard guard(values.device());
  auto v = values.contiguous();
  auto mt = meta.contiguous();
  auto out = at::empty({M, 4 * meta.size(1)}, values.options());
  if (G == 0) return out;
  // A valid code holds two increasing 2-bit positions and nothing above bit 3 (one host sync).
  auto first = mt.bitwise_and(3), second = mt.bitwise_right_shift(2).bitwise_and(3);
  auto bad = first.ge(second).logical_or(mt.bitwise_right_shift(4).ne(0)).view({G});
  if (bad.any().item<bool>()) {
    const int64_t g = bad.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "meta: entry ", g, " (", mt.view({G})[g].item<int64_t>(),
                ") is not a valid 2:4 code (two increasing 2-bit positions)");
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "decompress_2_4", [&] {
    decompress_2_4_kernel<scalar_t><<<grid_1d(G), kThreads, 0, stream>>>(
        v.data_ptr<scalar_t>(), mt.data_ptr<uint8_t>(), out.data_ptr<scalar_t>(), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace ebsparse::cuda

TORCH_LIBRARY_IMPL(ebsparse, CUDA, m) {
  m.impl("prune_2_4", &ebsparse::cuda::prune_2_4_cuda);
  m.impl("compress_2_4", &ebsparse::cuda::compress_2_4_cuda);
  m.impl("decompress_2_4", &ebsparse::cuda::decompress_2_4_cuda);
}
