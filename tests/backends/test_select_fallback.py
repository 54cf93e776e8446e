"""Automatic choice survives a failing candidate: the failure is a warning naming the backend, and
the layer runs on what is left (dense last)."""

import pytest
import torch

from ebsparse.backends import base, select
from ebsparse.backends.base import Backend
from ebsparse.ops import sparse_linear, sparse_linear_reference
from tests.ops.helpers import runs_on


class _Refusing(Backend):
    name = "refusing_for_test"
    ops = frozenset({"linear"})

    def linear_forward(self, inputs):
        raise NotImplementedError("only 2:4 masks")

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        raise NotImplementedError("only 2:4 masks")


class _Failing(Backend):
    name = "failing_for_test"
    ops = frozenset({"linear"})

    def linear_forward(self, inputs):
        raise RuntimeError("kernel refused these inputs")

    def linear_backward(self, inputs, grad_output, input_grad, weight_grad):
        raise RuntimeError("kernel refused these inputs")


@pytest.fixture
def failing_backend(monkeypatch):
    registered = {"dense": base._BACKENDS["dense"], _Failing.name: _Failing()}
    monkeypatch.setattr(base, "_BACKENDS", registered)
    select.clear()
    yield
    select.clear()


def test_a_failing_candidate_warns_and_dense_runs(failing_backend):
    x, w = torch.randn(5, 8), torch.randn(6, 8)
    mask = torch.rand(6, 8) < 0.5
    with pytest.warns(RuntimeWarning, match="failing_for_test.*kernel refused"), runs_on("dense", "linear"):
        y = sparse_linear(x, w, None, mask, backend="auto")
    torch.testing.assert_close(y, sparse_linear_reference(x, w, None, mask))
    assert next(iter(select.choices().values()))[0] == "dense"


def test_an_explicitly_named_failing_backend_raises(failing_backend):
    with pytest.raises(RuntimeError, match="kernel refused"):
        sparse_linear(torch.randn(2, 4), torch.randn(3, 4), None, torch.ones(3, 4, dtype=torch.bool),
                      backend="failing_for_test")


def test_a_candidate_refusing_the_inputs_is_dropped_quietly(monkeypatch):
    import warnings

    monkeypatch.setattr(base, "_BACKENDS", {"dense": base._BACKENDS["dense"], _Refusing.name: _Refusing()})
    select.clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with runs_on("dense", "linear"):
                sparse_linear(torch.randn(3, 8), torch.randn(4, 8), None, torch.rand(4, 8) < 0.5, backend="auto")
        with pytest.raises(RuntimeError, match="only 2:4 masks"):  # named explicitly, it raises
            sparse_linear(torch.randn(3, 8), torch.randn(4, 8), None, torch.rand(4, 8) < 0.5,
                          backend="refusing_for_test")
    finally:
        select.clear()
