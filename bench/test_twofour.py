"""The 2:4 conversions (`ebsparse.ops.prune_2_4`, `compress_2_4`, `decompress_2_4`): provider x
shape x phase, each row timed alternately with the pure-PyTorch reference on the same inputs
(there is no dense op doing these jobs, so the reference is the baseline).

Shapes are the (rows, K) matrices the kernels see: a linear weight as it is, a conv weight with
its input channels last, (Co*KH*KW, Ci). Providers: ``ebsparse`` (the public ops, as users call
them), ``ebsparse-native`` (the ``torch.ops.ebsparse`` kernels directly), ``ebsparse-triton``,
``reference``.
"""

import pytest
import torch

from bench import settings
from bench.providers import device_of, provider_params
from bench.timing import paired, synchronized
from ebsparse import ops
from ebsparse import triton as triton_kernels
from ebsparse.ops import prune_2_4_reference

SHAPES = ([(64, 64), (144, 16)] if settings.QUICK
          else [(1024, 1024), (256 * 3 * 3, 256)])  # linear 1024->1024; conv 256->256 3x3 as (Co*KH*KW, Ci)
PHASES = ["prune", "compress", "decompress"]
PROVIDERS = ["ebsparse", "ebsparse-native", "ebsparse-triton", "reference"]
ROUNDS = 25


def _calls(provider: str):
    """{phase: callable(weight, mask, values, meta)} of `provider`; a phase it lacks is absent."""
    if provider == "ebsparse":
        return {"prune": lambda w, m, v, c: ops.prune_2_4(w),
                "compress": lambda w, m, v, c: ops.compress_2_4(w, m),
                "decompress": lambda w, m, v, c: ops.decompress_2_4(v, c)}
    if provider == "ebsparse-native":
        native = torch.ops.ebsparse
        return {"prune": lambda w, m, v, c: native.prune_2_4(w),
                "compress": lambda w, m, v, c: native.compress_2_4(w, m),
                "decompress": lambda w, m, v, c: native.decompress_2_4(v, c)}
    if provider == "ebsparse-triton":
        return {"compress": lambda w, m, v, c: triton_kernels.compress_2_4(w, m),
                "decompress": lambda w, m, v, c: triton_kernels.decompress_2_4(v, c)}
    return {"prune": lambda w, m, v, c: prune_2_4_reference(w),
            "compress": lambda w, m, v, c: triton_kernels.compress_2_4_reference(w, m),
            "decompress": lambda w, m, v, c: triton_kernels.decompress_2_4_reference(v, c)}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("provider", provider_params(PROVIDERS, "2:4"))
def test_twofour(benchmark, provider, shape, phase):
    calls = _calls(provider)
    if phase not in calls:
        pytest.skip(f"{provider} has no {phase} kernel")
    device = device_of(provider)
    torch.manual_seed(0)
    weight = torch.randn(*shape, device=device)
    mask = prune_2_4_reference(weight)
    values, meta = triton_kernels.compress_2_4_reference(weight, mask)
    args = (weight, mask, values, meta)
    step, reference = (synchronized(lambda c=c: c(*args), device) for c in (calls[phase], _calls("reference")[phase]))
    paired(benchmark, step, reference, group=f"2:4 {phase} {shape[0]}x{shape[1]}", provider=provider,
           rounds=settings.rounds(ROUNDS), baseline_name="reference")
