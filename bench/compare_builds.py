"""Paired, in-process A/B of the native CPU ops against the build of another git revision.

Why: on this shared machine a kernel phase's time moves by 20-50% between processes (and between
minutes), which drowns the few-percent effects kernel work is made of. Two builds loaded into one
process and timed alternately, round by round, share most of that noise; the median of the
per-round ratios still moves by a few percent between runs (measured: 3-5%), so repeat a
comparison before trusting a difference that small. The other revision's C++ sources (csrc/, CPU only) are
compiled with their op namespace renamed (torch.ops.ebsparse_<rev>), so both sets of ops are
registered side by side; each build keeps its own pattern caches.

    python -m bench.compare_builds REV [--rounds 25] [--layers linear,conv]

prints, per layer, sparsity and phase, the median of (this tree's time / REV's time) and its
quartiles; below 1 means this tree is faster. The shapes and patterns are bench/phases.py's
(EBSPARSE_BENCH_QUICK=1 shrinks them, to check the script runs). Rebuild this tree first
(`setup.py build_ext --inplace`): the comparison is against the `ebsparse._C` it loads.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import torch
from torch.utils import cpp_extension

from bench.phases import SPARSITIES, conv_calls, linear_calls
from bench.settings import threads

# The C++ flags of setup.py (CPU build).
CXX_FLAGS = ["-O3", "-std=c++20", "-mavx2", "-mfma", "-fopenmp", "-fno-math-errno"]


def load_revision(rev: str, only: tuple[str, ...] = ()):
    """Compile `rev`'s csrc/ with its op namespace renamed, load it, return its op namespace.
    `only`: globs under csrc/ (e.g. ``"cpu/attention/qkv_attention.cpp"``) to compile just those
    sources and csrc/schemas.cpp, minutes sooner when one op family is compared."""
    namespace = "ebsparse_" + re.sub(r"\W", "_", rev) + ("_part" if only else "")
    work = pathlib.Path(tempfile.mkdtemp(prefix="ebsparse-ab-"))
    archive = subprocess.run(["git", "archive", rev, "csrc"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    sources = []
    keep = {work / "csrc" / "schemas.cpp"} | {p for g in only for p in work.glob("csrc/" + g)}
    for path in sorted(work.glob("csrc/**/*.cpp")):
        if only and path not in keep:
            continue
        text = re.sub(r"TORCH_LIBRARY(_IMPL)?\(ebsparse,", rf"TORCH_LIBRARY\1({namespace},", path.read_text())
        path.unlink()
        # Unique file names: ninja names each object after its source's, and several directories
        # hold a kernels_avx2.cpp.
        unique = path.with_name("_".join(path.relative_to(work / "csrc").parts))
        unique.write_text(text)
        sources.append(unique)
    cpp_extension.load(name=namespace, sources=[str(p) for p in sources], extra_cflags=CXX_FLAGS,
                       extra_ldflags=["-fopenmp"], extra_include_paths=[str(work / "csrc")],
                       build_directory=str(work), is_python_module=False, verbose=False)
    shutil.rmtree(work)  # the library stays mapped once loaded
    return getattr(torch.ops, namespace)


def paired_ratios(ours, theirs, rounds: int) -> list[float]:
    """ours / theirs per round, the two timed back to back in alternating order."""
    def seconds(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    ours()  # warm-up: plans and scratch of both builds
    theirs()
    ratios = []
    for r in range(rounds):
        if r % 2:
            b, a = seconds(theirs), seconds(ours)
        else:
            a, b = seconds(ours), seconds(theirs)
        ratios.append(a / b)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="git revision to compare against (e.g. HEAD~3, a tag)")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--layers", default="linear,conv")
    args = parser.parse_args()
    theirs = load_revision(args.rev)
    torch.set_num_threads(threads())  # as bench/conftest.py
    print(f"this tree / {args.rev}, {torch.get_num_threads()} threads: median [quartiles] of {args.rounds} "
          "paired rounds")
    for layer in args.layers.split(","):
        calls = linear_calls if layer == "linear" else conv_calls
        for sparsity in SPARSITIES:
            ours, _, _ = calls(sparsity)
            other, _, _ = calls(sparsity, op=theirs)
            cells = []
            for phase in (p for p in ours if p in other):  # a phase the other build lacks is skipped
                ratios = paired_ratios(ours[phase], other[phase], args.rounds)
                q = statistics.quantiles(ratios, n=4)
                cells.append(f"{phase} {statistics.median(ratios):.3f} [{q[0]:.2f}, {q[2]:.2f}]")
            print(f"{layer} {sparsity}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
