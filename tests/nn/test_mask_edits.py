"""Every way of changing a sparse layer's mask: the supported ones are seen by the next forward
(eager and compiled, on the native kernels and the dense path), the ones that bypass the mask's
version counter are caught at train()/eval()/load_state_dict (warning) or, with
EBSPARSE_STRICT_MASKS=1, at the next forward (error)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from ebsparse import SparseConv2d, SparseLinear
from ebsparse.backends import registered_backends
from ebsparse.formats import build_index
from ebsparse.nn.mask_state import STRICT_ENV, same_contents
from ebsparse.ops import sparse_linear

CPU = torch.device("cpu")


def _native_unavailable() -> str:
    native = registered_backends().get("native")
    if native is None:
        return "the native backend is not registered"
    return "; ".join(native.unavailable_reasons("linear", CPU, torch.float64) +
                     native.unavailable_reasons("conv2d", CPU, torch.float64))


NATIVE_UNAVAILABLE = _native_unavailable()
needs_native = pytest.mark.skipif(bool(NATIVE_UNAVAILABLE), reason=NATIVE_UNAVAILABLE)
BACKENDS = [pytest.param("native", marks=needs_native), "dense"]


def _layer(kind: str, backend: str):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = SparseLinear(12, 6, density=0.5, backend=backend), torch.randn(4, 12)
    else:
        layer, x = SparseConv2d(3, 4, 3, padding=1, density=0.5, backend=backend), torch.randn(2, 3, 5, 5)
    return layer.double(), x.double()


def _reference(layer, x, weight):
    if isinstance(layer, SparseLinear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)


@pytest.fixture
def native_calls(monkeypatch):
    """How many forward kernels the native backend ran (a test claiming native fails if it did not)."""
    native = registered_backends().get("native")
    calls = []
    if native is None:
        return calls
    for op in ("linear_forward", "conv2d_forward"):
        kernel = getattr(native, op)
        monkeypatch.setattr(native, op, lambda *args, _k=kernel, **kw: (calls.append(1), _k(*args, **kw))[1])
    return calls


def _assert_uses(layer, run, x, mask, native_calls):
    """`run(x)` (the layer, eager or compiled) computes with `mask`: weights are refilled everywhere,
    so a stale mask or index shows up in the output and in the weight's gradient."""
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight))
    before = len(native_calls)
    weight = layer.weight.detach().clone().requires_grad_()
    expected = _reference(layer, x, weight * mask)
    expected.pow(2).sum().backward()
    layer.weight.grad = None
    out = run(x)
    out.pow(2).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(layer.weight.grad, weight.grad)
    if layer.backend == "native":
        assert len(native_calls) > before, "the native kernels did not run"


def _new_mask(layer, seed):
    g = torch.Generator().manual_seed(seed)
    new = torch.rand(layer.mask.shape, generator=g) < 0.5
    assert not torch.equal(new, layer.mask)
    return new


def _set_mask(layer, new):
    layer.set_mask(new)


def _setitem(layer, new):
    layer.mask[~new] = False
    layer.mask[new] = True


def _copy(layer, new):
    with torch.no_grad():
        layer.mask.copy_(new)


def _load_state_dict(layer, new):
    state = layer.state_dict()
    state["mask"] = new.clone()
    layer.load_state_dict(state)


SUPPORTED = [_set_mask, _setitem, _copy, _load_state_dict]


def _through_data(layer, new):
    layer.mask.data[...] = new


def _through_numpy(layer, new):
    layer.mask.numpy()[...] = new.numpy()


UNSUPPORTED = [_through_data, _through_numpy]


@pytest.mark.parametrize("edit", SUPPORTED, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_supported_edit_is_seen_by_next_forward(kind, backend, edit, native_calls):
    layer, x = _layer(kind, backend)
    _assert_uses(layer, layer, x, layer.mask.clone(), native_calls)
    new = _new_mask(layer, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edit(layer, new)
        _assert_uses(layer, layer, x, new, native_calls)


@pytest.mark.parametrize("boundary", ["train", "eval", "load_state_dict"])
@pytest.mark.parametrize("edit", UNSUPPORTED, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_edit_bypassing_version_is_caught_at_boundary(kind, backend, edit, boundary, native_calls):
    layer, x = _layer(kind, backend)
    _assert_uses(layer, layer, x, layer.mask.clone(), native_calls)
    new = _new_mask(layer, 2)
    edit(layer, new)
    with pytest.warns(RuntimeWarning, match="without going through its version counter.*set_mask"):
        if boundary == "load_state_dict":  # a plain nn.Linear / nn.Conv2d state: no mask in it
            layer.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "mask"})
        else:
            getattr(layer, boundary)()
    _assert_uses(layer, layer, x, new, native_calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.train()  # the edit was taken in: no second warning


@pytest.mark.parametrize("edit", UNSUPPORTED, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_mode_raises_on_next_forward(backend, edit, monkeypatch):
    layer, x = _layer("linear", backend)
    layer(x)
    monkeypatch.setenv(STRICT_ENV, "1")
    layer(x)  # nothing edited: no error
    edit(layer, _new_mask(layer, 3))
    with pytest.raises(RuntimeError, match="SparseLinear.*without going through its version counter"):
        layer(x)
    with pytest.raises(RuntimeError, match="version counter"):
        layer.eval()


def test_strict_mode_allows_supported_edits(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    layer, x = _layer("conv", "dense")
    layer(x)
    new = _new_mask(layer, 4)
    _setitem(layer, new)
    layer(x)
    layer.set_mask(~new)
    layer.eval()
    layer(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_compiled_module_sees_mask_changes(kind, backend, native_calls):
    """RigL-style updates between calls of a compiled model: each supported way is seen by the next
    compiled call (without recompiling for a new number of kept weights), and an edit that bypassed
    the version counter from the next eval()."""
    layer, x = _layer(kind, backend)
    layer(x)  # resolves the backend eagerly, as a model's first step does
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    _assert_uses(layer, compiled, x, layer.mask.clone(), native_calls)
    for seed, edit in enumerate(SUPPORTED, start=10):
        new = _new_mask(layer, seed)
        edit(layer, new)
        _assert_uses(layer, compiled, x, new, native_calls)
    new = _new_mask(layer, 20)
    _through_data(layer, new)
    with pytest.warns(RuntimeWarning, match="version counter"):
        layer.eval()
    _assert_uses(layer, compiled, x, new, native_calls)


def test_mask_index_op():
    """The op compiled graphs read the index through: checked like every ebsparse op, and it
    returns the index of the mask as it is when the graph runs."""
    mask = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(5)) < 0.4
    torch.library.opcheck(torch.ops.ebsparse.mask_index.default, (mask,))
    with torch.no_grad():
        mask[0] = ~mask[0]
    for got, expected in zip(torch.ops.ebsparse.mask_index(mask), build_index(mask).tensors()):
        assert torch.equal(got, expected)


@needs_native
def test_rigl_in_a_compiled_model(native_calls):
    """RigL changes masks between calls of a compiled model (set_mask): every call after an update
    computes with the new masks, outputs and gradients alike."""
    from ebsparse.s2s import RigL

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = RigL(sparsity=0.5, distribution="uniform", update_every=2, prune_fraction=0.5, backend="native",
               optimizer_safe=True)
    sp.apply(model, opt)
    model(torch.randn(4, 16))  # an eager call first, as when backends are measured before compiling
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    layers = [model[0], model[2]]
    masks_seen = []
    for step in range(6):
        x = torch.randn(4, 16)
        weights = [m.weight.detach().clone().requires_grad_() for m in layers]
        hidden = torch.relu(F.linear(x, weights[0] * layers[0].mask, layers[0].bias))
        expected = F.linear(hidden, weights[1] * layers[1].mask, layers[1].bias)
        expected.pow(2).sum().backward()
        dense_grad = layers[0].dense_weight_grad
        before = len(native_calls)
        opt.zero_grad(set_to_none=True)
        out = compiled(x)
        out.pow(2).sum().backward()
        assert len(native_calls) > before, "the native kernels did not run"
        torch.testing.assert_close(out, expected, msg=f"step {step}")
        if not dense_grad:
            for layer, weight in zip(layers, weights):
                torch.testing.assert_close(layer.weight.grad, weight.grad, msg=f"step {step}")
        masks_seen.append(layers[0].mask.clone())
        if sp.step():
            opt.step()
    assert sp.updates >= 2 and not torch.equal(masks_seen[0], masks_seen[-1])


@pytest.mark.parametrize("shape", [(3, 8), (5, 3, 3, 3), (7,), (2, 9)])
def test_same_contents_finds_any_single_flip(shape):
    """The word-wise comparison sees a flip in every position, the tail past the last full word too."""
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(6)) < 0.5
    copy = mask.clone()
    assert same_contents(mask, copy)
    for i in range(mask.numel()):
        flipped = mask.clone()
        flipped.view(-1)[i] ^= True
        assert not same_contents(flipped, copy), i


def test_same_contents_of_a_non_contiguous_mask():
    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(7)) < 0.5
    copy = mask.t().contiguous()
    assert same_contents(mask.t(), copy)
    mask[2, 3] ^= True
    assert not same_contents(mask.t(), copy)


@needs_native
def test_inductor_compiled_layer_sees_mask_changes(native_calls):
    """The same with Inductor, whose generated code owns buffer lifetimes (the index comes back from
    an opaque op with an unbacked size)."""
    layer, x = _layer("linear", "native")
    layer(x)
    compiled = torch.compile(layer, fullgraph=True)
    _assert_uses(layer, compiled, x, layer.mask.clone(), native_calls)
    for seed, edit in enumerate((_set_mask, _setitem), start=30):
        new = _new_mask(layer, seed)
        edit(layer, new)
        _assert_uses(layer, compiled, x, new, native_calls)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_made_and_edited_in_inference_mode(kind, backend, native_calls):
    """Inference tensors have no version counter: a layer built in inference mode failed on its first
    forward, and an index cached by version would miss an in-place edit made there."""
    with torch.inference_mode():
        layer, x = _layer(kind, backend)
        first = layer(x)
        torch.testing.assert_close(first, _reference(layer, x, layer.weight * layer.mask))
        layer.mask.logical_not_()
        second = layer(x)
        torch.testing.assert_close(second, _reference(layer, x, layer.weight * layer.mask))
    assert not torch.allclose(first, second)
    assert (len(native_calls) == 2) == (backend == "native")


def test_functional_op_with_a_mask_made_in_inference_mode():
    w, x = torch.randn(4, 8), torch.randn(2, 8)
    with torch.inference_mode():
        mask = torch.rand(4, 8) < 0.5
    torch.testing.assert_close(sparse_linear(x, w, None, mask, backend="dense"), F.linear(x, w * mask))
