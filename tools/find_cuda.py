"""Locate the CUDA toolkit root and the nvrtc library of the pip `nvidia` wheels.

The `nvcc` on PATH may be a wrapper script, so the root is asked of nvcc itself (its `--dryrun`
output names the folder it really runs from) and accepted only if it holds
`include/cuda_runtime.h`. Used by setup.py and CMakeLists.txt; run as a script it prints
`CUDA_TOOLKIT_ROOT_DIR;CUDA_nvrtc_LIBRARY` for CMake.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile


def _is_root(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def _root_from_nvcc(nvcc: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.cu")
        open(probe, "w").close()
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", probe, "-o", os.path.join(tmp, "p.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
    if match:
        root = os.path.dirname(os.path.realpath(match.group(1)))
        if _is_root(root):
            return root
    return None


def find_cuda_root() -> str | None:
    """The CUDA toolkit root, or None when no usable toolkit is installed."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if _is_root(os.environ.get(env)):
            return os.environ[env]
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _root_from_nvcc(nvcc)
        if root:
            return root
        guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _is_root(guess):
            return guess
    for guess in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if _is_root(guess):
            return guess
    return None


def find_nvrtc_library() -> str | None:
    """libnvrtc inside the pip `nvidia` wheels that a CUDA torch pulls in (CMake's FindCUDAToolkit
    needs it for torch's targets), else the toolkit's own."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "**", "libnvrtc.so*"), recursive=True))
        hits = [h for h in hits if "builtins" not in os.path.basename(h)]
        if hits:
            return hits[0]
    cuda = find_cuda_root()
    if cuda:
        hits = sorted(glob.glob(os.path.join(cuda, "lib*", "libnvrtc.so*")))
        if hits:
            return hits[0]
    return None


if __name__ == "__main__":
    root = find_cuda_root()
    if root is None:
        sys.exit("no CUDA toolkit found (no folder holding include/cuda_runtime.h)")
    print(f"{root};{find_nvrtc_library() or ''}")
