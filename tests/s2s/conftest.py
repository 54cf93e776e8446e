"""Fixtures for the sparse-to-sparse tests; one thread (the machine is shared)."""

import pytest
import torch

from tests.s2s.s2s_models import ConvNet, GRUNet


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture
def convnet():
    torch.manual_seed(0)
    return ConvNet()


@pytest.fixture
def grunet():
    torch.manual_seed(0)
    return GRUNet()
