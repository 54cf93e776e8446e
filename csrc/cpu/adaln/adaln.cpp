// DiT's adaLN ops on the CPU (ebsparse/ops/layer_norm_modulate.py, gated_residual.py):
//   layer_norm_modulate: y = LayerNorm(x) * (1 + scale[:, None]) + shift[:, None]   (no affine)
//   gated_residual:      out = x + gate[:, None] * branch
// x, branch (B, N, C); shift, scale, gate (B, C). ATen runs each as three to five elementwise
// passes over (B, N, C) tensors, each a trip to DRAM at a DiT's sizes, forward and backward; here
// each is one pass (adaln.h, kernels.h). The backward's per-sample sums over the N tokens
// (dshift, dscale, dgate) are accumulated per task of kRowBlock token rows and the tasks' parts
// added in task order afterwards: the blocks depend on N only, so the sums come out bit-identical
// on any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cpu/adaln/adaln.h"
#include "cpu/capability.h"
#include "cpu/checks.h"

namespace ebsparse::adaln {

template <>
const RowKernels<float>& row_kernels<float>() {
  return cpu_capability() == CpuCapability::kAvx512 ? kernels_avx512() : kernels_avx2();
}
template <>
const RowKernels<double>& row_kernels<double>() {
  return kernels_f64();
}

namespace {

constexpr int64_t kRowBlock = 32;  // token rows per task

struct Shape {
  int64_t B, N, C, blocks;  // blocks: row blocks per sample
};

Shape check_tokens(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got ", t.device());
  check_float(t, name);
  TORCH_CHECK(t.dim() == 3 && t.size(2) > 0, name, ": expected (B, N, C) with C > 0, got ", t.sizes());
  return {t.size(0), t.size(1), t.size(2), (t.size(1) + kRowBlock - 1) / kRowBlock};
}

void check_per_sample(const at::Tensor& t, const at::Tensor& like, const Shape& s, const char* name,
                      const char* like_name) {
  check_same(like, t, like_name, name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.B && t.size(1) == s.C, name, ": expected (", s.B, ", ", s.C, "), got ",
              t.sizes());
}

void check_like_tokens(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  check_same(like, t, like_name, name);
  TORCH_CHECK(t.sizes() == like.sizes(), name, ": expected the shape of ", like_name, " ", like.sizes(), ", got ",
              t.sizes());
}

// A (B, C) per-sample tensor read in place where its values are contiguous within each sample:
// DiT's shift, scale and gate are column slices of the (B, 6C) modulation (`chunk` views with a
// row stride of 6C), and copying each one cost more time per step than the kernels spend reading
// them. Rows may be any stride apart (0: one row broadcast to every sample).
at::Tensor per_sample_rows(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

// Runs fn(b, first row, rows, task) over every (sample, row block) task.
template <class F>
void for_row_blocks(const Shape& s, F&& fn) {
  at::parallel_for(0, s.B * s.blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / s.blocks, r0 = (t % s.blocks) * kRowBlock;
      fn(b, r0, std::min(kRowBlock, s.N - r0), t);
    }
  });
}

// (B, C) from the task parts at `parts` (B * blocks rows of C): each sample's blocks added in block
// order, in a tensor of its own (an op's outputs must not alias one another).
template <class Real>
at::Tensor reduce_blocks(const Real* parts, const Shape& s, const at::TensorOptions& options) {
  at::Tensor out = at::zeros({s.B, s.C}, options);
  Real* o = out.data_ptr<Real>();
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t k = 0; k < s.blocks; ++k) {
      const Real* p = parts + (b * s.blocks + k) * s.C;
      for (int64_t c = 0; c < s.C; ++c) o[b * s.C + c] += p[c];
    }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_modulate_cpu(const at::Tensor& input,
                                                                       const at::Tensor& shift,
                                                                       const at::Tensor& scale, double eps) {
  const Shape s = check_tokens(input, "input");
  check_per_sample(shift, input, s, "shift", "input");
  check_per_sample(scale, input, s, "scale", "input");
  TORCH_CHECK(eps > 0, "eps: expected a positive number, got ", eps);
  const at::Tensor x = input.contiguous(), sh = per_sample_rows(shift), sc = per_sample_rows(scale);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({s.B, s.N}, x.options()), rstd = at::empty({s.B, s.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_modulate", [&] {
    const auto& k = row_kernels<scalar_t>();
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *shp = sh.const_data_ptr<scalar_t>(),
                   *scp = sc.const_data_ptr<scalar_t>();
    scalar_t *yp = y.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>(), *rp = rstd.data_ptr<scalar_t>();
    for_row_blocks(s, [&](int64_t b, int64_t r0, int64_t rows, int64_t) {
      const int64_t row = b * s.N + r0;
      k.norm_modulate_forward(xp + row * s.C, shp + b * sh.stride(0), scp + b * sc.stride(0), yp + row * s.C, mp + row, rp + row, rows,
                              s.C, eps);
    });
  });
  return {y, mean, rstd};
}

// (grad_input, grad_shift (B, C), grad_scale (B, C))
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_modulate_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& scale) {
  const Shape s = check_tokens(input, "input");
  check_like_tokens(grad_output, input, "grad_output", "input");
  check_per_sample(scale, input, s, "scale", "input");
  for (const auto* t : {&mean, &rstd}) {
    const char* name = t == &mean ? "mean" : "rstd";
    check_same(input, *t, "input", name);
    TORCH_CHECK(t->numel() == s.B * s.N, name, ": expected (", s.B, ", ", s.N, ") values, got ", t->sizes());
  }
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous(), sc = per_sample_rows(scale);
  const at::Tensor m = mean.contiguous(), r = rstd.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor parts = at::zeros({2, s.B * s.blocks, s.C}, x.options());
  at::Tensor dshift_out, dscale_out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_modulate_backward", [&] {
    const auto& k = row_kernels<scalar_t>();
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>(),
                   *scp = sc.const_data_ptr<scalar_t>(), *mp = m.const_data_ptr<scalar_t>(),
                   *rp = r.const_data_ptr<scalar_t>();
    scalar_t *dxp = dx.data_ptr<scalar_t>(), *dshift = parts.data_ptr<scalar_t>(),
             *dscale = dshift + s.B * s.blocks * s.C;
    for_row_blocks(s, [&](int64_t b, int64_t r0, int64_t rows, int64_t task) {
      const int64_t row = b * s.N + r0;
      k.norm_modulate_backward(gp + row * s.C, xp + row * s.C, mp + row, rp + row, scp + b * sc.stride(0), dxp + row * s.C,
                               dshift + task * s.C, dscale + task * s.C, rows, s.C);
    });
    dshift_out = reduce_blocks(dshift, s, x.options());
    dscale_out = reduce_blocks(dscale, s, x.options());
  });
  return {dx, dshift_out, dscale_out};
}

at::Tensor gated_residual_cpu(const at::Tensor& input, const at::Tensor& gate, const at::Tensor& branch) {
  const Shape s = check_tokens(input, "input");
  check_per_sample(gate, input, s, "gate", "input");
  check_like_tokens(branch, input, "branch", "input");
  const at::Tensor x = input.contiguous(), gt = per_sample_rows(gate), br = branch.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_residual", [&] {
    const auto& k = row_kernels<scalar_t>();
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = gt.const_data_ptr<scalar_t>(),
                   *bp = br.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_row_blocks(s, [&](int64_t b, int64_t r0, int64_t rows, int64_t) {
      const int64_t off = (b * s.N + r0) * s.C;
      k.gated_forward(xp + off, gp + b * gt.stride(0), bp + off, op + off, rows, s.C);
    });
  });
  return out;
}

// (grad_branch, grad_gate (B, C)); the input's gradient is grad_output itself (no kernel).
std::tuple<at::Tensor, at::Tensor> gated_residual_backward_cpu(const at::Tensor& grad_output, const at::Tensor& gate,
                                                               const at::Tensor& branch) {
  const Shape s = check_tokens(branch, "branch");
  check_like_tokens(grad_output, branch, "grad_output", "branch");
  check_per_sample(gate, branch, s, "gate", "branch");
  const at::Tensor g = grad_output.contiguous(), gt = per_sample_rows(gate), br = branch.contiguous();
  at::Tensor dbranch = at::empty_like(br, at::MemoryFormat::Contiguous);
  at::Tensor parts = at::zeros({s.B * s.blocks, s.C}, br.options());
  at::Tensor dgate;
  AT_DISPATCH_FLOATING_TYPES(br.scalar_type(), "gated_residual_backward", [&] {
    const auto& k = row_kernels<scalar_t>();
    const scalar_t *gp = g.const_data_ptr<scalar_t>(), *gtp = gt.const_data_ptr<scalar_t>(),
                   *bp = br.const_data_ptr<scalar_t>();
    scalar_t *dbp = dbranch.data_ptr<scalar_t>(), *pp = parts.data_ptr<scalar_t>();
    for_row_blocks(s, [&](int64_t b, int64_t r0, int64_t rows, int64_t task) {
      const int64_t off = (b * s.N + r0) * s.C;
      k.gated_backward(gp + off, bp + off, gtp + b * gt.stride(0), dbp + off, pp + task * s.C, rows, s.C);
    });
    dgate = reduce_blocks(pp, s, br.options());
  });
  return {dbranch, dgate};
}

// The gated residual and the next norm + modulate of a DiT block as one op:
//   out = input + gate * branch,  y = LayerNorm(out) * (1 + scale) + shift
// A task runs the two row kernels back to back on its 32 token rows, so the norm reads `out` from
// L1/L2 rather than DRAM; the backward likewise takes a row block through the norm's backward, adds
// the residual stream's own gradient (what autograd would add in a separate pass) and the gated
// add's backward. (out, y, mean, rstd)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_norm_modulate_cpu(
    const at::Tensor& input, const at::Tensor& gate, const at::Tensor& branch, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  const Shape s = check_tokens(input, "input");
  check_per_sample(gate, input, s, "gate", "input");
  check_like_tokens(branch, input, "branch", "input");
  check_per_sample(shift, input, s, "shift", "input");
  check_per_sample(scale, input, s, "scale", "input");
  TORCH_CHECK(eps > 0, "eps: expected a positive number, got ", eps);
  const at::Tensor x = input.contiguous(), gt = per_sample_rows(gate), br = branch.contiguous();
  const at::Tensor sh = per_sample_rows(shift), sc = per_sample_rows(scale);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({s.B, s.N}, x.options()), rstd = at::empty({s.B, s.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "residual_norm_modulate", [&] {
    const auto& k = row_kernels<scalar_t>();
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = gt.const_data_ptr<scalar_t>(),
                   *bp = br.const_data_ptr<scalar_t>(), *shp = sh.const_data_ptr<scalar_t>(),
                   *scp = sc.const_data_ptr<scalar_t>();
    scalar_t *op = out.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>(),
             *rp = rstd.data_ptr<scalar_t>();
    for_row_blocks(s, [&](int64_t b, int64_t r0, int64_t rows, int64_t) {
      const int64_t row = b * s.N + r0, off = row * s.C;
      k.gated_forward(xp + off, gp + b * gt.stride(0), bp + off, op + off, rows, s.C);
      k.norm_modulate_forward(op + off, shp + b * sh.stride(0), scp + b * sc.stride(0), yp + off, mp + row, rp + row, rows, s.C, eps);
    });
  });
  return {out, y, mean, rstd};
}

// (grad_input, grad_gate (B, C), grad_branch, grad_shift (B, C), grad_scale (B, C)) from the
// gradients of y and, where defined, of out (the residual stream's own).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_norm_modulate_backward_cpu(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& grad_y, const at::Tensor& out,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& gate,
    const at::Tensor& branch) {
  const Shape s = check_tokens(out, "out");
  check_like_tokens(grad_y, out, "grad_y", "out");
  if (grad_out) check_like_tokens(*grad_out, out, "grad_out", "out");
  check_like_tokens(branch, out, "branch", "out");
  check_per_sample(scale, out, s, "scale", "out");
  check_per_sample(gate, out, s, "gate", "out");
  for (const auto* t : {&mean, &rstd}) {
    const char* name = t == &mean ? "mean" : "rstd";
    check_same(out, *t, "out", name);
    TORCH_CHECK(t->numel() == s.B * s.N, name, ": expected (", s.B, ", ", s.N, ") values, got ", t->sizes());
  }
  const at::Tensor o = out.contiguous(), gy = grad_y.contiguous(), sc = per_sample_rows(scale), gt = per_sample_rows(gate);
  const at::Tensor br = branch.contiguous(), m = mean.contiguous(), r = rstd.contiguous();
  const at::Tensor go = grad_out ? grad_out->contiguous() : at::Tensor();
  at::Tensor dx = at::empty_like(o, at::MemoryFormat::Contiguous);
  at::Tensor dbranch = at::empty_like(o, at::MemoryFormat::Contiguous);
  at::Tensor parts = at::zeros({3, s.B * s.blocks, s.C}, o.options());
  at::Tensor dgate, dshift, dscale;
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "residual_norm_modulate_backward", [&] {
    const auto& k = row_kernels<scalar_t>();
    const scalar_t *op = o.const_data_ptr<scalar_t>(), *gyp = gy.const_data_ptr<scalar_t>(),
                   *scp = sc.const_data_ptr<scalar_t>(), *gtp = gt.const_data_ptr<scalar_t>(),
                   *bp = br.const_data_ptr<scalar_t>(), *mp = m.const_data_ptr<scalar_t>(),
                   *rp = r.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.defined() ? go.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *dxp = dx.data_ptr<scalar_t>(), *dbp = dbranch.data_ptr<scalar_t>();
    scalar_t *pshift = parts.data_ptr<scalar_t>(), *pscale = pshift + s.B * s.blocks * s.C,
             *pgate = pscale + s.B * s.blocks * s.C;
    for_row_blocks(s, [&](int64_t b, int64_t r0, int64_t rows, int64_t task) {
      const int64_t row = b * s.N + r0, off = row * s.C;
      k.norm_modulate_backward(gyp + off, op + off, mp + row, rp + row, scp + b * sc.stride(0), dxp + off,
                               pshift + task * s.C, pscale + task * s.C, rows, s.C);
      if (gop) {
        scalar_t* d = dxp + off;
        const scalar_t* g = gop + off;
        for (int64_t i = 0; i < rows * s.C; ++i) d[i] += g[i];
      }
      k.gated_backward(dxp + off, bp + off, gtp + b * gt.stride(0), dbp + off, pgate + task * s.C, rows, s.C);
    });
    dshift = reduce_blocks(pshift, s, o.options());
    dscale = reduce_blocks(pscale, s, o.options());
    dgate = reduce_blocks(pgate, s, o.options());
  });
  return {dx, dgate, dbranch, dshift, dscale};
}

}  // namespace
}  // namespace ebsparse::adaln

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("layer_norm_modulate", &ebsparse::adaln::layer_norm_modulate_cpu);
  m.impl("layer_norm_modulate_backward", &ebsparse::adaln::layer_norm_modulate_backward_cpu);
  m.impl("gated_residual", &ebsparse::adaln::gated_residual_cpu);
  m.impl("gated_residual_backward", &ebsparse::adaln::gated_residual_backward_cpu);
  m.impl("residual_norm_modulate", &ebsparse::adaln::residual_norm_modulate_cpu);
  m.impl("residual_norm_modulate_backward", &ebsparse::adaln::residual_norm_modulate_backward_cpu);
}
