"""ebsparse: sparse training of diffusion models that is faster in wall-clock time, not just on paper."""

__version__ = "0.1.0"
