"""Build ebsparse and its extension `ebsparse._C`.

`csrc/` (C++20, CPU kernels) is always built. `kernels/*.cu` is added when torch is a CUDA build
and a CUDA toolkit is found: `EBSPARSE_CUDA=auto` (the default, also when unset), `1` requires the
CUDA kernels, `0` leaves them out (CMakeLists.txt takes the same values). The CPU code targets
AVX2+FMA (never -march=native); each kernel family has one translation unit per instruction set,
and the AVX-512 ones (`csrc/cpu/*/kernels_avx512.cpp`) raise their own target in the file, so both
builds compile every source with the same flags; `csrc/cpu/capability.h` chooses at run time.
Install with `pip install --no-build-isolation .` so the build uses the installed torch.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
from find_cuda import find_cuda_root  # noqa: E402

_force = os.environ.get("EBSPARSE_CUDA", "").strip().lower() or "auto"
if _force not in ("auto", "0", "1"):
    sys.exit(f"EBSPARSE_CUDA: expected auto, 0 or 1, got {os.environ['EBSPARSE_CUDA']!r}")

_cuda_root = find_cuda_root() if _force != "0" else None
if _cuda_root:
    # torch.utils.cpp_extension reads CUDA_HOME at import; its own guess from the nvcc wrapper's
    # folder compiles but then fails to link cudart.
    os.environ["CUDA_HOME"] = _cuda_root
# sm_80 and sm_90 machine code, plus sm_90 PTX that newer GPUs (Blackwell, ...) JIT-compile.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = torch.version.cuda is not None and _cuda_root is not None
if _force == "1" and not with_cuda:
    sys.exit("EBSPARSE_CUDA=1 but torch is not a CUDA build or no CUDA toolkit was found")
if _force == "auto" and not with_cuda:
    print("ebsparse: building without CUDA kernels (no CUDA torch or no toolkit)", file=sys.stderr)

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
# -fno-trapping-math: lets GCC if-convert (and so vectorise) the float selects in `omp simd` loops
# (cpu/fast_math.h's clamp); no result changes, only floating-point exception flags are not kept.
cxx_flags = ["-O3", "-std=c++20", "-mavx2", "-mfma", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
extension_kwargs = dict(
    name="ebsparse._C",
    sources=sources,
    include_dirs=[os.path.join(here, "csrc")],
    extra_compile_args={"cxx": cxx_flags},
    extra_link_args=["-fopenmp"],
)
if with_cuda:
    extension_kwargs["sources"] = sources + sorted(glob.glob("kernels/*.cu"))
    extension_kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]
    extension_kwargs["define_macros"] = [("EBSPARSE_WITH_CUDA", "1")]
    extension = CUDAExtension(**extension_kwargs)
else:
    extension = CppExtension(**extension_kwargs)

setup(
    packages=find_packages(include=["ebsparse", "ebsparse.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
