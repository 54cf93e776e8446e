"""Ahead-of-time compilation of Triton kernels for GPUs this machine does not have.

Triton's compiler needs no GPU to lower a kernel to PTX for a named target, so a kernel's class can
be proved here: a tensor-core kernel's PTX holds `mma` (sm_80) or `wgmma`/`mma` (sm_90), and
`metadata.shared` / `n_regs` show whether a config fits an SM. Used by the tests and by the roofline
bench; never on a user's path.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from ._common import kernel, triton

ARCHES = (80, 90)


@dataclass(frozen=True)
class CompiledKernel:
    """What a compile for one target gives: the PTX text and the resources one program needs."""

    arch: int
    ptx: str
    shared_bytes: int
    registers: int | None

    @property
    def uses_tensor_cores(self) -> bool:
        return bool(re.search(r"\b(wgmma|mma)\.", self.ptx))

    def count(self, instruction: str) -> int:
        """How many times an instruction (e.g. `ld.global.v4`) appears in the PTX."""
        return len(re.findall(re.escape(instruction) + r"\b", self.ptx))


def compile_for(
    fn,
    signature: Mapping[str, str],
    constexprs: Mapping[str, object],
    arch: int,
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    divisible_by_16: tuple[str, ...] = (),
) -> CompiledKernel:
    """Compile `fn` (a plain function, an `ebsparse.triton._common.kernel` or a `triton.jit`
    function) for `sm_<arch>`. `signature` gives every non-constexpr argument's Triton type
    (`"*bf16"`, `"i32"`, `"fp32"`); `constexprs` the value of every `tl.constexpr` argument.
    `divisible_by_16` names the pointer/integer arguments to compile as 16-aligned / multiples of 16,
    as the JIT specialises them at launch when they are (what lets loads vectorise)."""
    if triton is None:
        raise RuntimeError("triton is not installed: ahead-of-time compilation needs it")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if isinstance(fn, kernel):
        fn = fn.fn
    if isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    # Built directly rather than through `triton.jit`, which returns an interpreted function when
    # TRITON_INTERPRET=1 (as in the tests) and that cannot be compiled.
    jit_fn = triton.runtime.JITFunction(fn)
    missing = [a for a in jit_fn.arg_names if a not in signature and a not in constexprs]
    if missing:
        raise ValueError(f"signature: no type for argument(s) {missing} of {jit_fn.__name__}")
    sig = {a: ("constexpr" if a in constexprs else signature[a]) for a in jit_fn.arg_names}
    unknown = [a for a in divisible_by_16 if a not in signature]
    if unknown:
        raise ValueError(f"divisible_by_16: {unknown} are not non-constexpr arguments of {jit_fn.__name__}")
    attrs = {(jit_fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in divisible_by_16}
    source = ASTSource(jit_fn, sig, dict(constexprs), attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    # The cache would otherwise go to ~/.triton; a test must not depend on (or fill) it.
    previous = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="ebsparse-aot-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
        finally:
            if previous is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = previous
    return CompiledKernel(
        arch=arch,
        ptx=compiled.asm["ptx"],
        shared_bytes=int(getattr(compiled.metadata, "shared", 0)),
        registers=getattr(compiled.metadata, "n_regs", None),
    )
