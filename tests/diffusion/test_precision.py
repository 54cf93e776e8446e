"""training.precision: validated; bf16/fp16 train under autocast with float32 parameters and
optimizer state; fp16's loss scale survives a resume exactly; sparse layers stay sparse."""

import pytest
import torch

from ebsparse.backends import trace
from ebsparse.diffusion.config import load_config
from ebsparse.diffusion.trainer import MixedPrecision, Trainer
from ebsparse.nn import SparseConv2d, SparseLinear
from tests.ops.helpers import usable_backends


def test_precision_is_validated(digits_config_path):
    with pytest.raises(ValueError, match=r"training.precision='fp8'.*fp32.*bf16.*fp16"):
        load_config(digits_config_path, ["training.precision=fp8"])
    assert load_config(digits_config_path, []).training.precision == "fp32"


# fp16 matmuls are slow on the CPU (~10 s a step of the digits model): one step there, enough for the
# autocast dtype and the scaler; whether a finite fp16 step updates is checked on a small model below.
@pytest.mark.parametrize("precision,steps", [("bf16", 3), ("fp16", 1)])
def test_mixed_precision_trains_with_float32_master_weights(tiny_digits_config, tmp_path, precision, steps):
    cfg = tiny_digits_config
    cfg.training.precision = precision
    cfg.training.steps = steps
    cfg.training.ckpt_every = steps
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = set()
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in convs]
    trainer.fit(progress=False)
    for h in hooks:
        h.remove()
    assert convs and seen == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    if precision == "bf16":
        assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert (trainer.amp.scaler is not None) == (precision == "fp16")


def test_mixed_precision_differs_from_fp32_only_by_rounding(tiny_digits_config, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(*_args(tiny_digits_config, precision))
        trainer = Trainer(cfg, tmp_path / precision)
        runs[precision] = trainer.train_step()["loss"]
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=0.05)


def _args(cfg, precision):
    from tests.diffusion.conftest import DIGITS

    return DIGITS, ["training.steps=1", "training.batch_size=8", f"training.precision={precision}",
                    "sampling.timesteps=5", "sampling.num_samples=4"]


def test_fp16_loss_scale_is_restored_on_resume(tiny_digits_config, tmp_path):
    cfg = tiny_digits_config
    cfg.training.precision = "fp16"
    cfg.training.steps = cfg.training.ckpt_every = 1
    a = Trainer(cfg, tmp_path / "run")
    a.fit(progress=False)
    a.amp.scaler.update(123.0)  # a scale no fresh scaler has
    a.save()
    b = Trainer(cfg, tmp_path / "run")
    b.load()
    assert b.amp.scaler.get_scale() == 123.0


def test_fp16_finite_step_updates_with_unscaled_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("fp16", torch.device("cpu"))
    amp.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # 2**16 overflows fp16 at once here
    before = model.weight.detach().clone()
    x = torch.randn(3, 4)
    with amp.autocast():
        loss = model(x).float().sum()
    amp.backward(loss, opt)
    torch.testing.assert_close(model.weight.grad, x.sum(0).expand(2, 4), rtol=1e-3, atol=1e-3)  # unscaled
    amp.step(opt)
    amp.update()
    assert not torch.equal(model.weight, before)


def test_fp16_skips_a_step_with_inf_gradients_and_lowers_the_scale():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("fp16", torch.device("cpu"))
    before = model.weight.detach().clone()
    with amp.autocast():
        loss = model(torch.full((3, 4), 1e30)).float().sum()  # overflows in fp16
    amp.backward(loss, opt)
    amp.step(opt)
    scale = amp.scaler.get_scale()
    amp.update()
    assert torch.equal(model.weight, before)
    assert amp.scaler.get_scale() < scale


def test_sparse_layers_stay_sparse_under_cpu_autocast():
    """CPU autocast keeps the fp32 sparse kernels (ebsparse.ops.amp); the trainer's bf16 changes
    nothing about which backend a sparse layer runs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(SparseConv2d(4, 8, 3, padding=1, density=0.2, backend="native"),
                                torch.nn.Flatten(), SparseLinear(8 * 6 * 6, 4, density=0.2, backend="native"))
    if usable_backends("linear", torch.device("cpu"), torch.float32).count("native") == 0:
        pytest.skip("native kernels not built")
    amp = MixedPrecision("bf16", torch.device("cpu"))
    with trace() as calls, amp.autocast():
        out = model(torch.randn(2, 4, 6, 6))
    out.sum().backward()
    assert out.dtype == torch.float32
    assert {b for _, phase, b in calls if phase == "forward"} == {"native"}
