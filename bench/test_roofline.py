"""Writes the roofline model's table (bench/roofline.py) to bench/results/roofline.md: a model of
the GPU kernels, not a measurement; `python -m bench.roofline` writes the same file."""

from bench import roofline


def test_roofline_table():
    path = roofline.write()
    print(path.read_text())
