"""The ahead-of-time compile helper: it reports tensor cores only for a kernel that uses them."""

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from ebsparse.triton.aot import compile_for  # noqa: E402


def _tile_product(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + r[:, None] * BLOCK + r[None, :])
    b = tl.load(b_ptr + r[:, None] * BLOCK + r[None, :])
    tl.store(c_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, b))


def _tile_sum(a_ptr, c_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    tl.store(c_ptr + r, tl.load(a_ptr + r) * 2.0)


@pytest.mark.parametrize("arch", [80, 90])
def test_dot_kernel_compiles_to_tensor_core_ptx(arch):
    k = compile_for(_tile_product, {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32"}, {"BLOCK": 64}, arch)
    assert k.uses_tensor_cores
    assert k.shared_bytes > 0


@pytest.mark.parametrize("arch", [80, 90])
def test_elementwise_kernel_has_no_tensor_cores(arch):
    k = compile_for(_tile_sum, {"a_ptr": "*fp32", "c_ptr": "*fp32"}, {"BLOCK": 128}, arch)
    assert not k.uses_tensor_cores


def test_missing_signature_names_the_argument():
    with pytest.raises(ValueError, match="c_ptr"):
        compile_for(_tile_sum, {"a_ptr": "*fp32"}, {"BLOCK": 128}, 80)
