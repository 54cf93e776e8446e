"""``ebsparse prune``: prune a trained (or freshly built) model and write it as recipe + weights.

Front-end glue: it reads experiment configs, checkpoints and datasets, and counts with
:mod:`ebsparse.metrics.counting`; the pruning itself is :func:`ebsparse.pruning.prune`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["NAME", "HELP", "configure", "run", "summary_table"]

NAME = "prune"
HELP = "channel-prune a model (dependency-aware) and save it as recipe + safetensors"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML whose 'model' section is the dense model")
    p.add_argument("--checkpoint", default=None,
                   help="run directory or checkpoint.safetensors from 'ebsparse train' (default: fresh weights)")
    p.add_argument("--ratio", type=float, required=True, help="pruning_ratio per dependency group, in [0, 1)")
    p.add_argument("--importance", choices=("magnitude", "taylor"), default="magnitude")
    p.add_argument("--round-to", type=int, default=None, help="round kept channels to a multiple of this (e.g. 8)")
    p.add_argument("--t-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="Taylor: draw timesteps only from [LO, HI] (default: the whole schedule)")
    p.add_argument("--taylor-batch-size", type=int, default=16, help="Taylor: images per gradient batch")
    p.add_argument("--taylor-batches", type=int, default=1, help="Taylor: gradient batches summed")
    p.add_argument("--no-ema", action="store_true", help="score and keep the raw weights instead of the EMA")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave groups the pruner cannot shrink whole instead of failing")
    p.add_argument("--out", default=None, help="output directory (default: runs/<config>-pruned-<ratio>)")
    p.add_argument("--seed", type=int, default=0)


def _fmt(n: float, unit: str) -> str:
    return f"{n / 1e6:.2f}M" if unit == "M" else f"{n / 1e9:.2f}G"


def summary_table(before, after, inputs_meta) -> tuple[str, dict[str, Any]]:
    """Markdown table of params, MACs (papers' counter, batch 1) and layers changed."""
    import copy

    from torch import nn

    from ..metrics.counting import count_macs, count_params

    def macs(m):
        return count_macs(copy.deepcopy(m).to("meta"), *inputs_meta).macs

    p0, p1 = count_params(before), count_params(after)
    m0, m1 = macs(before), macs(after)
    shapes0 = {n: tuple(t.shape) for n, t in before.state_dict().items()}
    shapes1 = {n: tuple(t.shape) for n, t in after.state_dict().items()}
    layers = [n for n, m in before.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.GroupNorm,
                                                                     nn.LayerNorm, nn.Embedding))]
    changed = [n for n in layers if any(shapes0[k] != shapes1.get(k) for k in shapes0 if k.rsplit(".", 1)[0] == n)]
    rows = [
        "| | before | after | reduction |",
        "|---|---|---|---|",
        f"| params | {_fmt(p0, 'M')} | {_fmt(p1, 'M')} | {p0 / max(p1, 1):.2f}x |",
        f"| MACs | {_fmt(m0, 'G')} | {_fmt(m1, 'G')} | {m0 / max(m1, 1):.2f}x |",
        f"| layers changed | | {len(changed)} of {len(layers)} | |",
    ]
    return "\n".join(rows), {"params_before": p0, "params_after": p1, "macs_before": m0, "macs_after": m1,
                             "layers_changed": len(changed), "layers": len(layers)}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..diffusion.config import load_config
    from ..models import build_model, example_inputs
    from ..pruning.config import PruningConfig
    from ..pruning.pipeline import prune
    from ..pruning.recipe import save_pruned

    torch.manual_seed(args.seed)
    cfg = load_config(args.config)
    spec = dict(cfg.model)
    source = "fresh weights"
    if args.checkpoint:
        from ..drivers.checkpoints import model_from_checkpoint

        # The pruned model carries the weights it was scored on (the reference scores the EMA).
        model, trained, _ = model_from_checkpoint(args.checkpoint, use_ema=not args.no_ema)
        if trained.model != spec:
            raise ValueError(f"checkpoint {args.checkpoint} does not match the model of {args.config}: it was "
                             f"trained with model {trained.model}")
        if "sparsity" in trained.algorithms:
            raise ValueError(f"checkpoint {args.checkpoint} is a sparse-to-sparse run; channel pruning needs a dense model")
        source = f"{args.checkpoint} ({'model' if args.no_ema else 'ema'} weights)"
    else:
        model = build_model(spec)
    model.eval()
    config = PruningConfig(pruning_ratio=args.ratio, importance=args.importance, round_to=args.round_to,
                           on_unsupported="skip" if args.skip_unsupported else "error",
                           taylor_t_range=tuple(args.t_range) if args.t_range else (0, cfg.diffusion.num_timesteps - 1),
                           taylor_batches=args.taylor_batches)
    inputs = example_inputs(spec)
    loss_fn = None
    if config.importance == "taylor":
        loss_fn = _taylor_loss(cfg, spec, config, args)
    result = prune(model, inputs, config, loss_fn=loss_fn)
    table, numbers = summary_table(model, result.model, example_inputs(spec, device="meta"))
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-pruned-{args.ratio:g}"
    save_pruned(out, result.model, result.mask, base=spec, example_inputs=inputs, config=config,
                extra={"source": source, "config_file": str(args.config), **numbers})
    pruned_groups = sum(1 for k in result.mask if not bool(result.mask[k].all()))
    print(f"pruned {Path(args.config).stem} at ratio {args.ratio:g} ({args.importance}, from {source}); "
          f"{pruned_groups} of {len(list(result.mask))} dependency groups pruned")
    print(table)
    print(f"wrote {out / 'recipe.json'} and {out / 'model.safetensors'}")
    return 0


def _taylor_loss(cfg, spec, config, args):
    import torch

    from ..data import build_dataset
    from ..diffusion.schedule import NoiseSchedule
    from ..pruning.importance import taylor_loss

    if spec.get("type") != "ddpm_unet":
        raise ValueError("ebsparse prune --importance taylor supports model.type 'ddpm_unet' (x, t) only")
    dataset = build_dataset(cfg.data)
    n = min(args.taylor_batch_size, len(dataset))
    images = getattr(dataset, "images", None)
    x0 = images[:n] if isinstance(images, torch.Tensor) else torch.stack([dataset[i][0] for i in range(n)])
    gen = torch.Generator().manual_seed(args.seed)
    return taylor_loss(x0.float(), NoiseSchedule(cfg.diffusion), config.taylor_t_range, gen)
