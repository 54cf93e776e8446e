// Private to csrc/cpu: which instruction set the fp32 kernels run, chosen once per process.
//
// Every kernel family has one translation unit per instruction set (conv/kernels_<isa>.cpp,
// linear/kernels_<isa>.cpp); the library is built for the AVX2+FMA baseline and the AVX-512 units
// raise their own target at the top of the file, so nothing in them runs before this check. The
// environment variable EBSPARSE_CPU_CAPABILITY (avx2 or avx512; unset or empty: the best the CPU
// has) overrides the choice, to test or time the AVX2 kernels on an AVX-512 machine.
#pragma once

namespace ebsparse {

enum class CpuCapability { kAvx2, kAvx512 };

// The capability every fp32 kernel of this process uses. Throws (every call) when
// EBSPARSE_CPU_CAPABILITY holds an unknown value or asks for AVX-512 on a CPU without it.
CpuCapability cpu_capability();

// "avx2" or "avx512": the values EBSPARSE_CPU_CAPABILITY takes.
const char* capability_name(CpuCapability c);

}  // namespace ebsparse
