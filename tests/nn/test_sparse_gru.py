"""SparseGRU against nn.GRU on the masked weights (the reference): outputs, final states and every
gradient, over shapes, layers, directions, layouts and densities; the native kernels must have run."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from ebsparse import backends
from ebsparse.formats import magnitude_mask
from ebsparse.nn import SparseGRU
from ebsparse.nn.gru import RECURRENT_SPARSE_MAX_DENSITY

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_masks(gru: nn.GRU, density: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Exact-count random masks (magnitude of random scores), one per weight."""
    return {name: magnitude_mask(torch.rand(p.shape, generator=generator), density)
            for name, p in gru.named_parameters() if name.startswith("weight_")}


def _run(module, x, h0):
    out, h_n = module(x, h0)
    # a loss that reaches every output and the final states, with weights that are not all equal
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() + (h_n ** 2).sum()
    loss.backward()
    return out, h_n


def _compare(sparse: SparseGRU, x: torch.Tensor, h0: torch.Tensor | None, tol: float):
    reference = sparse.to_dense()
    x_ref = x.detach().clone().requires_grad_()
    with backends.trace() as calls:
        out, h_n = _run(sparse, x, h0)
    out_ref, h_ref = _run(reference, x_ref, h0)
    torch.testing.assert_close(out, out_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(h_n, h_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=tol, rtol=tol)
    for name, p in sparse.named_parameters():
        expected = getattr(reference, name).grad
        if name in sparse.weight_names:
            mask = sparse.mask_of(name)
            expected = expected.masked_fill(~mask, 0)
            assert torch.all(p.grad[~mask] == 0), f"{name}: gradient of a dropped weight is not exactly 0"
        torch.testing.assert_close(p.grad, expected, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")
    return calls


@given(batch=st.integers(1, 5), length=st.integers(1, 6), input_size=st.integers(1, 9),
       hidden=st.integers(1, 11), layers=st.integers(1, 3), bidirectional=st.booleans(),
       batch_first=st.booleans(), bias=st.booleans(), density=st.sampled_from([0.0, 0.1, 0.37, 1.0]),
       seed=st.integers(0, 2**16))
def test_matches_masked_gru(batch, length, input_size, hidden, layers, bidirectional, batch_first, bias, density,
                            seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense = nn.GRU(input_size, hidden, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    sparse = SparseGRU.from_dense(dense, _random_masks(dense, density, g), backend="native")
    shape = (batch, length, input_size) if batch_first else (length, batch, input_size)
    x = torch.randn(shape, generator=g).requires_grad_()
    h0 = torch.randn(layers * (2 if bidirectional else 1), batch, hidden, generator=g) if seed % 2 else None
    calls = _compare(sparse, x, h0, tol=2e-5)
    # the backend named: the input projections and the recurrence ran on the native kernels
    assert ("gru_recurrence", "forward", "native") in calls and ("gru_recurrence", "backward", "native") in calls
    assert ("linear", "forward", "native") in calls and ("linear", "backward", "native") in calls


def test_auto_runs_sparse_recurrence_below_threshold_and_dense_above():
    torch.manual_seed(0)
    dense = nn.GRU(6, 16, 2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 4, 6, requires_grad=True)
    low = SparseGRU.from_dense(dense, density=RECURRENT_SPARSE_MAX_DENSITY / 2)
    calls = _compare(low, x, None, tol=2e-5)
    assert {c for c in calls if c[0] == "gru_recurrence"} == {("gru_recurrence", p, "native")
                                                              for p in ("forward", "backward")}
    x.grad = None
    high = SparseGRU.from_dense(dense, density=0.9)
    calls = _compare(high, x, None, tol=2e-5)
    assert {c for c in calls if c[0] == "gru_recurrence"} == {("gru_recurrence", p, "dense")
                                                              for p in ("forward", "backward")}


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("sparse_recurrence", [True, False])
def test_gradcheck_fp64(bidirectional, sparse_recurrence):
    torch.manual_seed(1)
    dense = nn.GRU(3, 4, 2, bidirectional=bidirectional, batch_first=True).double()
    sparse = SparseGRU.from_dense(dense, density=0.5 if sparse_recurrence else 1.0,
                                  backend="native" if sparse_recurrence else None)
    names = [n for n, _ in sparse.named_parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * (2 if bidirectional else 1), 2, 4, dtype=torch.float64, requires_grad=True)
    params = [p for _, p in sparse.named_parameters()]

    def f(x, h0, *values):
        with torch.nn.utils.stateless._reparametrize_module(sparse, dict(zip(names, values))):
            out, h_n = sparse(x, h0)
        return out, h_n

    with backends.trace() as calls:
        assert torch.autograd.gradcheck(f, (x, h0, *params), atol=1e-6, rtol=1e-5, eps=1e-6)
    phase = "native" if sparse_recurrence else "dense"
    assert ("gru_recurrence", "backward", phase) in calls


def test_dense_weight_grad_gives_the_full_gradient():
    """RigL's update steps: the full dense gradient, through the sparse path and the dense one."""
    torch.manual_seed(2)
    dense = nn.GRU(5, 7, 2, bidirectional=True)
    for backend in ("native", "dense"):
        sparse = SparseGRU.from_dense(dense, density=0.3, backend=backend)
        sparse.dense_weight_grad = True
        reference = sparse.to_dense()
        x = torch.randn(4, 3, 5)
        _run(sparse, x, None)
        _run(reference, x, None)
        for name in sparse.weight_names:
            torch.testing.assert_close(getattr(sparse, name).grad, getattr(reference, name).grad, atol=2e-5,
                                       rtol=2e-5)
            assert getattr(sparse, name).grad[~sparse.mask_of(name)].abs().sum() > 0


def test_dense_backend_and_unbatched_input_match_the_reference():
    torch.manual_seed(3)
    dense = nn.GRU(4, 6, 2, batch_first=True)
    for backend in ("native", "dense"):
        sparse = SparseGRU.from_dense(dense, density=0.25, backend=backend)
        reference = sparse.to_dense()
        x, h0 = torch.randn(5, 4), torch.randn(2, 6)  # unbatched (L, I) and (layers, H)
        with backends.trace() as calls:
            out, h_n = sparse(x, h0)
        out_ref, h_ref = reference(x, h0)
        torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(h_n, h_ref, atol=2e-5, rtol=2e-5)
        assert (("gru", "forward", "dense") in calls) == (backend == "dense")


def test_state_dict_is_gru_compatible_and_masks_round_trip():
    torch.manual_seed(4)
    dense = nn.GRU(3, 5, 2, bidirectional=True)
    sparse = SparseGRU.from_dense(dense, density=0.4)
    state = sparse.state_dict()
    assert set(dense.state_dict()) | {f"{n}_mask" for n in sparse.weight_names} == set(state)
    other = SparseGRU(3, 5, 2, bidirectional=True)
    other.load_state_dict(state)
    for name in sparse.weight_names:
        assert torch.equal(other.mask_of(name), sparse.mask_of(name))
    # a plain nn.GRU state dict loads (masks kept), and the masked weights go back into an nn.GRU
    other.load_state_dict(dense.state_dict())
    assert torch.equal(other.mask_of("weight_hh_l1"), sparse.mask_of("weight_hh_l1"))
    nn.GRU(3, 5, 2, bidirectional=True).load_state_dict(sparse.to_dense().state_dict())


def test_mask_edit_is_seen_by_the_next_forward():
    torch.manual_seed(5)
    sparse = SparseGRU(4, 8, 1, backend="native", density=0.3)
    x = torch.randn(3, 2, 4)
    sparse(x)
    sparse.weight_hh_l0_mask[0] = False  # an in-place edit through the version counter
    with torch.no_grad():
        sparse.weight_hh_l0[0] = 5.0  # a dropped weight holding a value must still count zero
        out, _ = sparse(x)
        torch.testing.assert_close(out, sparse.to_dense()(x)[0], atol=2e-5, rtol=2e-5)


def test_bad_arguments_raise_naming_them():
    gru = nn.GRU(4, 8)
    with pytest.raises(TypeError, match="gru"):
        SparseGRU.from_dense(nn.LSTM(4, 8))
    with pytest.raises(ValueError, match="masks"):
        SparseGRU.from_dense(gru, {"weight_hh_l7": torch.ones(24, 8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="weight_hh_l0"):
        SparseGRU.from_dense(gru, {"weight_hh_l0": torch.ones(8, 8, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        SparseGRU.from_dense(gru, {"weight_hh_l0": torch.ones(24, 8)})
    with pytest.raises(ValueError, match="backend"):
        SparseGRU(4, 8, backend="triton")
    sparse = SparseGRU.from_dense(gru, density=0.5)
    with pytest.raises(ValueError, match="input"):
        sparse(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="hx"):
        sparse(torch.randn(3, 2, 4), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="timestep"):
        sparse(torch.randn(0, 2, 4))
    with pytest.raises(TypeError, match="PackedSequence"):
        sparse(nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 4), [3, 2]))
    sparse.backend = "native"
    with pytest.raises(RuntimeError, match="native"):
        sparse.to(torch.float16)(torch.randn(3, 2, 4, dtype=torch.float16))


def test_sparsify_and_densify_convert_grus():
    from ebsparse.nn import densify, sparsify

    torch.manual_seed(6)
    model = nn.Sequential(nn.GRU(4, 8, 2, batch_first=True))
    mask = torch.rand(24, 8) < 0.3
    report = sparsify(model, masks={"0.weight_hh_l1": mask}, backend="native")
    assert report.converted == ["0"] and isinstance(model[0], SparseGRU)
    assert torch.equal(model[0].mask_of("weight_hh_l1"), mask)
    assert model[0].density_of("weight_ih_l0") == 1.0  # weights without a mask stay dense
    other = nn.Sequential(nn.GRU(4, 8, 2))
    sparsify(other, density=0.25)
    assert all(abs(other[0].density_of(n) - 0.25) < 0.02 for n in other[0].weight_names)
    report = sparsify(nn.Sequential(nn.GRU(4, 8)), pattern="2:4")
    assert "unstructured" in report.skipped["0"]
    assert densify(model) == ["0"] and type(model[0]) is nn.GRU
    assert torch.all(model[0].weight_hh_l1[~mask] == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_pytorch_gru_on_the_masked_weights():
    """No sparse GRU kernel on CUDA: auto runs cuDNN's GRU on the masked weights; native raises."""
    torch.manual_seed(7)
    sparse = SparseGRU.from_dense(nn.GRU(6, 32, 2, bidirectional=True, batch_first=True), density=0.2).cuda()
    x = torch.randn(4, 9, 6, device="cuda", requires_grad=True)
    calls = _compare(sparse, x, None, tol=1e-4)
    assert ("gru", "forward", "dense") in calls and not any(c[0] == "gru_recurrence" for c in calls)
    sparse.backend = "native"
    with pytest.raises(RuntimeError, match="native"):
        sparse(x)
