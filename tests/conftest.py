"""Shared test settings: hypothesis profiles sized for a 2-core machine, and the Triton
interpreter on machines without a GPU, so the Triton backend is tested through the same op tests
as every other backend (ebsparse.triton applies triton.jit at first launch, so this takes effect
even though torch imports triton earlier)."""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
torch.set_num_threads(min(2, torch.get_num_threads()))
