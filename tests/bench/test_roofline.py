"""The roofline model (bench/roofline.py): its bound is the larger of compute and memory time, it
tells memory-bound from compute-bound shapes, and the table it writes holds every shape."""

import pytest

from bench import roofline
from bench.roofline import A100, H100, Cost, predict


@pytest.mark.parametrize("gpu", [A100, H100], ids=lambda g: g.name)
def test_bound_is_the_larger_of_compute_and_memory_time(gpu):
    c = Cost("gemm", flops=2 * 4096**3, bytes=3 * 4096**2 * 2)
    p = predict(c, gpu)
    assert p.compute_s == pytest.approx(c.flops / gpu.peak("tensor", "bf16"))
    assert p.memory_s == pytest.approx(c.bytes / gpu.bandwidth)
    assert p.bound_s == pytest.approx(max(p.compute_s, p.memory_s) + gpu.launch_s)
    assert p.limited_by == "compute"
    assert p.expected_s > p.bound_s


def test_small_batch_gemm_is_memory_bound_and_the_compressed_2_4_weight_nearly_halves_it():
    steps = roofline.gemm_step(16, 4096, 4096)
    dense_fwd = next(c for c in steps["dense cuBLAS"] if c.name == "fwd")
    sparse_fwd = next(c for c in steps["2:4 sparse TC"] if c.name == "fwd")
    assert predict(dense_fwd, H100).limited_by == "memory"
    assert sparse_fwd.bytes < 0.6 * dense_fwd.bytes


def test_the_dense_path_costs_more_than_plain_dense_by_its_masking_passes():
    steps = roofline.gemm_step(256, 4096, 4096)
    assert roofline.step_time(steps["dense path (masked)"], H100) > roofline.step_time(steps["dense cuBLAS"], H100)


def test_sparse_tensor_cores_run_the_same_flops_at_twice_the_peak():
    steps = roofline.gemm_step(8192, 8192, 8192)
    dense_fwd = next(c for c in steps["dense cuBLAS"] if c.name == "fwd")
    sparse_fwd = next(c for c in steps["2:4 sparse TC"] if c.name == "fwd")
    assert sparse_fwd.flops == dense_fwd.flops
    assert predict(sparse_fwd, H100).compute_s == pytest.approx(predict(dense_fwd, H100).compute_s / 2, rel=1e-2)


def test_bad_cost_and_unknown_peak_name_the_problem():
    with pytest.raises(ValueError, match="unit"):
        Cost("x", 1, 1, unit="warp")
    with pytest.raises(ValueError, match="fp8"):
        predict(Cost("x", 1, 1, dtype="fp8"), H100)


def test_table_has_a_row_per_shape_and_implementation(tmp_path):
    path = roofline.write(tmp_path)
    text = path.read_text()
    assert "MODEL" in text
    n_shapes = len(roofline.LINEAR_SHAPES) + len(roofline.CONV_SHAPES)
    assert text.count("| dense cuBLAS |") == n_shapes
    assert text.count("| 2:4 sparse TC |") == n_shapes
