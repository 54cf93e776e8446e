"""Fixtures shared by the tests in this directory."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
