"""Fixtures shared by the tests in this directory."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_cache, monkeypatch):
    """No user-set Inception weights leak into the FID tests."""
    monkeypatch.delenv("EBSPARSE_INCEPTION_WEIGHTS", raising=False)
