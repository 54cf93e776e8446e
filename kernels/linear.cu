// CUDA kernels and registration of the sparse linear ops. The weight W is the dense-shaped (M, K)
// matrix, read in place at the kept positions given by the CSR (row_ptr, col_idx) or the CSC
// (col_ptr, row_idx); see csrc/ebsparse.h.
//
// Layout: the batch dimension N is made the fastest-moving one. Dense operands are transposed to
// (features, N) once per call, so a warp's 32 threads (32 consecutive n) load 32 consecutive
// elements of one feature row: coalesced. The pattern and the weight values are the same for all
// threads of a block and are staged through shared memory. Accumulation is in acc_type (float for
// float16/bfloat16/float32, double for float64).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.cuh"

namespace ebsparse::cuda {
namespace {

// Row-gather SpMM, used by the forward and by grad_input:
//   out_t[r, n] = bias[r] + sum_{j = ptr[r]}^{ptr[r+1]-1} W[r * w_row_stride + idx[j] * w_idx_stride]
//                                                        * in_t[idx[j], n]
// with in_t (I, N) and out_t (R, N) contiguous, bias optional (nullptr = 0).
//   forward:    r = m, idx = col_idx, W[m, k] at m * K + k  (w_row_stride = K, w_idx_stride = 1),
//               in_t = X^T (K, N)   ->  Y^T[m, n] = b[m] + sum_k W[m, k] X[n, k]
//   grad_input: r = k, idx = row_idx, W[m, k] at m * K + k  (w_row_stride = 1, w_idx_stride = K),
//               in_t = dY^T (M, N)  ->  dX^T[k, n] = sum_m W[m, k] dY[n, m]
// Grid: x = row r, y = tiles of kThreads consecutive n (grid-stride in y).
template <typename scalar_t>
__global__ void row_gather_spmm_kernel(const scalar_t* __restrict__ in_t, const scalar_t* __restrict__ w,
                                       const scalar_t* __restrict__ bias, const int32_t* __restrict__ ptr,
                                       const int32_t* __restrict__ idx, scalar_t* __restrict__ out_t,
                                       int64_t N, int64_t w_row_stride, int64_t w_idx_stride) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ int32_t s_idx[kThreads];
  __shared__ acc_t s_w[kThreads];

  const int64_t r = blockIdx.x;
  const int32_t begin = ptr[r], end = ptr[r + 1];
  const acc_t b = bias ? static_cast<acc_t>(bias[r]) : acc_t(0);

  for (int64_t tile = blockIdx.y; tile * kThreads < N; tile += gridDim.y) {
    const int64_t n = tile * kThreads + threadIdx.x;
    acc_t acc = b;
    for (int32_t j0 = begin; j0 < end; j0 += kThreads) {
      // Stage up to kThreads (index, weight) pairs of this row, one per thread: coalesced.
      const int32_t j = j0 + static_cast<int32_t>(threadIdx.x);
      if (j < end) {
        const int32_t i = idx[j];
        s_idx[threadIdx.x] = i;
        s_w[threadIdx.x] = static_cast<acc_t>(w[r * w_row_stride + int64_t(i) * w_idx_stride]);
      }
      __syncthreads();
      const int count = min(kThreads, end - j0);
      if (n < N)
        for (int t = 0; t < count; ++t) acc += s_w[t] * static_cast<acc_t>(in_t[int64_t(s_idx[t]) * N + n]);
      __syncthreads();
    }
    if (n < N) out_t[r * N + n] = static_cast<scalar_t>(acc);
  }
}

// SDDMM at the kept positions only, used by grad_weight:
//   dW[m, k] = sum_n dY^T[m, n] * X^T[k, n]   for every kept (m, k) = (m, col_idx[j]),
// dW untouched (zero) elsewhere. Grid: x = row m; each warp of the block takes kept entries
// j = row_ptr[m] + warp, + warps_per_block, ...; its lanes stride along n (coalesced) and the
// partial sums are reduced with warp shuffles.
template <typename scalar_t>
__global__ void sddmm_kept_kernel(const scalar_t* __restrict__ dy_t, const scalar_t* __restrict__ x_t,
                                  const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ col_idx,
                                  scalar_t* __restrict__ dw, int64_t N, int64_t K) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t m = blockIdx.x;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  const scalar_t* dy_row = dy_t + m * N;
  for (int32_t j = row_ptr[m] + warp; j < row_ptr[m + 1]; j += warps) {
    const int64_t k = col_idx[j];
    const scalar_t* x_row = x_t + k * N;
    acc_t acc = 0;
    for (int64_t n = lane; n < N; n += kWarp) acc += static_cast<acc_t>(dy_row[n]) * static_cast<acc_t>(x_row[n]);
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) dw[m * K + k] = static_cast<scalar_t>(acc);
  }
}

// Launches row_gather_spmm_kernel over R rows and N columns; returns out_t (R, N).
at::Tensor row_gather_spmm(const at::Tensor& in_t, const at::Tensor& w, const at::Tensor* bias,
                           const at::Tensor& ptr, const at::Tensor& idx, int64_t R, int64_t w_row_stride,
                           int64_t w_idx_stride, const char* op_name) {
  const int64_t N = in_t.size(1);
  auto out_t = at::empty({R, N}, in_t.options());
  if (R == 0 || N == 0) return out_t;
  TORCH_CHECK(R <= kMaxGridX, op_name, ": too many rows (", R, ") for one launch");
  const dim3 grid(static_cast<unsigned>(R), static_cast<unsigned>(index::grid_tiles(N, kThreads, kMaxGridYZ)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_t.scalar_type(), "row_gather_spmm", [&] {
    row_gather_spmm_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        in_t.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias ? bias->data_ptr<scalar_t>() : nullptr,
        ptr.data_ptr<int32_t>(), idx.data_ptr<int32_t>(), out_t.data_ptr<scalar_t>(), N, w_row_stride,
        w_idx_stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out_t;
}

// ---- registered entry points: the checks of csrc/cpu/linear/register.cpp, then the kernels ----

at::Tensor csr_linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx) {
  check_float_cuda(input, "input");
  check_same(input, weight, "input", "weight");
  TORCH_CHECK(input.dim() == 2, "input: expected (N, K), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == input.size(1), "weight: expected (M, ",
              input.size(1), "), got ", weight.sizes());
  check_pattern(row_ptr, col_idx, weight.size(0), "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, weight.size(1), "row_ptr", "col_idx");
  if (bias) {
    check_same(input, *bias, "input", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias: expected (",
                weight.size(0), ",), got ", bias->sizes());
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t M = weight.size(0), K = weight.size(1);
  auto x_t = input.t().contiguous();  // (K, N)
  auto w = weight.contiguous();
  at::Tensor b;
  if (bias) b = bias->contiguous();
  auto y_t = row_gather_spmm(x_t, w, bias ? &b : nullptr, row_ptr, col_idx, M, /*w_row_stride=*/K,
                             /*w_idx_stride=*/1, "csr_linear");
  return y_t.t().contiguous();  // (N, M)
}

at::Tensor csr_linear_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                      const at::Tensor& col_ptr, const at::Tensor& row_idx) {
  check_float_cuda(grad_output, "grad_output");
  check_same(grad_output, weight, "grad_output", "weight");
  TORCH_CHECK(grad_output.dim() == 2 && weight.dim() == 2 && grad_output.size(1) == weight.size(0),
              "grad_output: expected (N, ", weight.size(0), "), got ", grad_output.sizes());
  check_pattern(col_ptr, row_idx, weight.size(1), "col_ptr", "row_idx", weight);
  check_pattern_values(col_ptr, row_idx, weight.size(0), "col_ptr", "row_idx");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t K = weight.size(1);
  auto dy_t = grad_output.t().contiguous();  // (M, N)
  auto w = weight.contiguous();
  auto dx_t = row_gather_spmm(dy_t, w, nullptr, col_ptr, row_idx, K, /*w_row_stride=*/1,
                              /*w_idx_stride=*/K, "csr_linear_grad_input");
  return dx_t.t().contiguous();  // (N, K)
}

at::Tensor csr_linear_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  check_float_cuda(grad_output, "grad_output");
  check_same(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.dim() == 2 && input.dim() == 2 && grad_output.size(0) == input.size(0),
              "input: expected (", grad_output.size(0), ", K), got ", input.sizes());
  check_pattern(row_ptr, col_idx, grad_output.size(1), "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, input.size(1), "row_ptr", "col_idx");
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0), K = input.size(1), M = grad_output.size(1);
  auto dw = at::zeros({M, K}, input.options());
  if (M == 0 || K == 0 || col_idx.numel() == 0) return dw;
  TORCH_CHECK(M <= kMaxGridX, "csr_linear_grad_weight: too many rows (", M, ") for one launch");
  auto dy_t = grad_output.t().contiguous();  // (M, N)
  auto x_t = input.t().contiguous();         // (K, N)
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "csr_linear_grad_weight", [&] {
    sddmm_kept_kernel<scalar_t><<<static_cast<unsigned>(M), kThreads, 0, stream>>>(
        dy_t.data_ptr<scalar_t>(), x_t.data_ptr<scalar_t>(), row_ptr.data_ptr<int32_t>(),
        col_idx.data_ptr<int32_t>(), dw.data_ptr<scalar_t>(), N, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dw;
}

}  // namespace
}  // namespace ebsparse::cuda

TORCH_LIBRARY_IMPL(ebsparse, CUDA, m) {
  m.impl("csr_linear", &ebsparse::cuda::csr_linear_cuda);
  m.impl("csr_linear_grad_input", &ebsparse::cuda::csr_linear_grad_input_cuda);
  m.impl("csr_linear_grad_weight", &ebsparse::cuda::csr_linear_grad_weight_cuda);
}
