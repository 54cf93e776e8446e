"""Channel importance per dependency group: magnitude and first-order Taylor, as the reference scores.

Magnitude (EBD / Diff-Pruning): a channel's score is the sum of w² over its out-channel weights in
every producer and its in-channel weights in every consumer (Conv/Linear weights only; biases and
norm weights are not used), averaged over the group's layers, then divided by the group mean.

Taylor: the same with (w·∂L/∂w)² for Conv/Linear, plus |w·∂L/∂w| of GroupNorm/LayerNorm scales.
The gradients come from the diffusion loss at timesteps drawn from a given range only, which is what
the timestep-aware tickets (TA-EB) need.

When an EMA exists the scores must be taken on the EMA weights (the reference builds its masks from
the EMA of each epoch): pass them as ``ema_state``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..diffusion.losses import epsilon_loss, sample_timesteps
from ..diffusion.schedule import NoiseSchedule
from .config import PruningConfig
from .errors import PruningError
from .graph import ChannelGroup, DependencyGroups, Member

__all__ = ["compute_importance", "taylor_loss", "magnitude_importance", "taylor_importance", "uniform_importance"]

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)


def _channel_scores(tensor: torch.Tensor, member: Member) -> torch.Tensor:
    """Per member channel: the sum of ``tensor`` over the channel's slice (dim 0 for out, 1 for in)."""
    dim = 0 if member.kind == "out" else 1
    idx = torch.tensor(member.idxs, dtype=torch.long, device=tensor.device)
    sliced = tensor.index_select(dim, idx).movedim(dim, 0)
    return sliced.reshape(sliced.shape[0], -1).sum(1)


def _reduce(group: ChannelGroup, per_member: list[tuple[Member, torch.Tensor]]) -> torch.Tensor:
    """Average over the layers that touch each root channel, then divide by the group mean."""
    total = torch.zeros(group.size, dtype=torch.float64)
    count = torch.zeros(group.size, dtype=torch.float64)
    for member, scores in per_member:
        root = torch.tensor(member.root_idxs, dtype=torch.long)
        total.index_add_(0, root, scores.detach().double().cpu())
        touched = torch.zeros(group.size, dtype=torch.float64)
        touched[root] = 1.0
        count += touched
    imp = total / count.clamp(min=1.0)
    mean = imp.mean()
    return (imp / mean if mean > 0 else imp).float()


def _weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


def magnitude_importance(model: nn.Module, groups: DependencyGroups) -> dict[str, torch.Tensor]:
    """``{group key: (size,) float scores}``; higher = more important. Reads weights only."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        per_member = []
        for m in (g.members if g.prunable else ()):  # unsupported groups' index maps are not trusted
            mod = modules.get(m.name)
            if mod is not None and _weight_layer(mod):
                _check_real(mod.weight, m.name)
                per_member.append((m, _channel_scores(mod.weight.detach().float() ** 2, m)))
        out[g.key] = _reduce(g, per_member)
    return out


def uniform_importance(model: nn.Module, groups: DependencyGroups) -> dict[str, torch.Tensor]:
    """All channels equal (the lowest indices are kept). For counting on meta-device models."""
    return {g.key: torch.zeros(g.size) for g in groups}


def _check_real(t: torch.Tensor, name: str) -> None:
    if t.is_meta:
        raise PruningError(f"layer {name!r} has meta-device weights: importance needs real weights "
                           f"(use importance='uniform' to count)")


def taylor_importance(model: nn.Module, groups: DependencyGroups, loss_fn: Callable[[nn.Module], torch.Tensor],
                      batches: int = 1) -> dict[str, torch.Tensor]:
    """First-order Taylor scores from the gradients of ``loss_fn(model)`` summed over ``batches`` calls.

    The model's own ``.grad`` fields are left as they were (scores are computed on a copy).
    """
    if batches < 1:
        raise PruningError(f"taylor_importance(batches={batches}): must be >= 1")
    work = copy.deepcopy(model)
    work.train()
    work.zero_grad(set_to_none=True)
    for _ in range(batches):
        loss = loss_fn(work)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise PruningError("taylor_importance: loss_fn(model) must return a scalar tensor")
        loss.backward()
    modules = dict(work.named_modules())
    out = {}
    for g in groups:
        per_member = []
        for m in (g.members if g.prunable else ()):
            mod = modules.get(m.name)
            if mod is None or getattr(mod, "weight", None) is None or mod.weight.grad is None:
                continue
            wg = (mod.weight.detach() * mod.weight.grad).float()
            if _weight_layer(mod):
                per_member.append((m, _channel_scores(wg ** 2, m)))
            elif isinstance(mod, _NORMS):
                per_member.append((m, _channel_scores(wg.abs(), m)))
        out[g.key] = _reduce(g, per_member)
    return out


def taylor_loss(x0: torch.Tensor, schedule: NoiseSchedule, t_range: tuple[int, int],
                generator: torch.Generator | None = None,
                forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                seen_t: list | None = None) -> Callable[[nn.Module], torch.Tensor]:
    """The training objective (:func:`ebsparse.diffusion.losses.epsilon_loss`) at timesteps from
    ``t_range = (lo, hi)`` (inclusive) only, as the ``loss_fn(model)`` closure Taylor importance needs.

    Timesteps are drawn exactly as the trainer draws them (:func:`~ebsparse.diffusion.losses.sample_timesteps`,
    antithetic pairs ``lo + hi - t``), then the noise, from ``generator``; the loss is reduced as
    ``schedule.config.loss_reduction`` says. ``x0``: (B, C, H, W) clean images in [-1, 1].
    ``forward(model, x_t, t)`` defaults to ``model(x_t, t)``. Every call draws fresh t and noise;
    drawn t are appended to ``seen_t`` when given.
    """
    lo, hi = int(t_range[0]), int(t_range[1])
    if not 0 <= lo <= hi < schedule.num_timesteps:
        raise PruningError(f"t_range={t_range!r} must satisfy 0 <= lo <= hi < T={schedule.num_timesteps}")
    fwd = forward or (lambda model, x, t: model(x, t))
    antithetic = schedule.config.timestep_sampling == "antithetic"

    def loss_fn(model: nn.Module) -> torch.Tensor:
        t = sample_timesteps(x0.shape[0], schedule.num_timesteps, antithetic=antithetic, low=lo, high=hi,
                             generator=generator).to(x0.device)
        if seen_t is not None:
            seen_t.extend(t.tolist())
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        return epsilon_loss(lambda x, tt: fwd(model, x, tt), schedule, x0, t, noise, schedule.config.loss_reduction)

    return loss_fn


def compute_importance(model: nn.Module, groups: DependencyGroups, config: PruningConfig,
                       ema_state: Mapping[str, torch.Tensor] | None = None,
                       loss_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Scores by ``config.importance``, on the EMA weights when ``ema_state`` is given.

    ``loss_fn`` is required for Taylor (see :func:`taylor_loss`). ``model`` itself is not modified.
    """
    if ema_state is not None:
        ema_model = copy.deepcopy(model)
        try:
            ema_model.load_state_dict(dict(ema_state), strict=True)
        except RuntimeError as e:
            raise PruningError(f"ema_state does not match the model: {e}") from e
        model = ema_model
    if config.importance == "magnitude":
        return magnitude_importance(model, groups)
    if config.importance == "uniform":
        return uniform_importance(model, groups)
    if loss_fn is None:
        raise PruningError("importance='taylor' needs loss_fn (e.g. pruning.taylor_loss(x0, schedule, t_range))")
    return taylor_importance(model, groups, loss_fn, config.taylor_batches)
