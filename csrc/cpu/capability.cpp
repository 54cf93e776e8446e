// The one instruction-set detector of the CPU kernels (capability.h), and the op reporting it.
#include "cpu/capability.h"

#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace ebsparse {
namespace {

// The subsets the AVX-512 kernels use.
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
}

CpuCapability choose() {
  // Variables that forced AVX2 before EBSPARSE_CPU_CAPABILITY: refuse them rather than ignore them,
  // so a script still setting one does not time or test the AVX-512 kernels by mistake.
  for (const char* old : {"EBSPARSE_CONV_AVX2", "EBSPARSE_CPU_NO_AVX512"})
    TORCH_CHECK(std::getenv(old) == nullptr, old, " is no longer read: set EBSPARSE_CPU_CAPABILITY=avx2 instead");
  const bool avx512 = cpu_has_avx512();
  const char* env = std::getenv("EBSPARSE_CPU_CAPABILITY");
  const std::string asked = env ? env : "";
  if (asked.empty()) return avx512 ? CpuCapability::kAvx512 : CpuCapability::kAvx2;
  if (asked == capability_name(CpuCapability::kAvx2)) return CpuCapability::kAvx2;
  if (asked == capability_name(CpuCapability::kAvx512)) {
    TORCH_CHECK(avx512, "EBSPARSE_CPU_CAPABILITY=avx512, but this CPU lacks AVX-512 (F, VL, BW and DQ are needed); "
                        "unset it or set avx2");
    return CpuCapability::kAvx512;
  }
  TORCH_CHECK(false, "EBSPARSE_CPU_CAPABILITY: expected avx2 or avx512 (or unset: the best this CPU has), got '",
              asked, "'");
}

std::string cpu_capability_op() { return capability_name(cpu_capability()); }

}  // namespace

CpuCapability cpu_capability() {
  static const CpuCapability chosen = choose();  // a throw leaves it unset: the next call checks again
  return chosen;
}

const char* capability_name(CpuCapability c) { return c == CpuCapability::kAvx512 ? "avx512" : "avx2"; }

}  // namespace ebsparse

// No tensor arguments, so no dispatch key: CompositeExplicitAutograd serves every call.
TORCH_LIBRARY_IMPL(ebsparse, CompositeExplicitAutograd, m) { m.impl("cpu_capability", &ebsparse::cpu_capability_op); }
