"""Shared test settings: hypothesis profiles sized for a 2-core machine, and the Triton
interpreter on machines without a GPU, so the Triton backend is tested through the same op tests
as every other backend (ebsparse.triton applies triton.jit at first launch, so this takes effect
even though torch imports triton earlier)."""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest
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


@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test: on a shared 2-core machine, 2 OpenMP
    threads contend and run ~10x slower. The kernel tests keep 2 threads, to exercise the
    parallel paths."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch):
    """Cached feature networks go to a per-session folder, never to the user's ~/.cache."""
    monkeypatch.setenv("EBSPARSE_CACHE", str(tmp_path_factory.getbasetemp() / "ebsparse-cache"))
