"""``ebsparse prune``: prune a trained (or freshly built) model and write it as recipe + weights.

The folder it writes is a model like a run directory: ``ebsparse sample`` and ``ebsparse train
--init-from`` take it (its recipe records the experiment config, under ``extra.experiment``).

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
    p.add_argument("--checkpoint", default=None,
                   help="run directory or checkpoint.safetensors from 'ebsparse train' (default: fresh weights "
                        "of --config's model)")
    p.add_argument("--config", default=None,
                   help="experiment YAML whose 'model' section is the dense model (default: the config the "
                        "checkpoint was trained with; needed without --checkpoint)")
    p.add_argument("--ratio", type=float, required=True, help="pruning_ratio per dependency group, in [0, 1)")
    p.add_argument("--importance", choices=("magnitude", "taylor"), default="magnitude")
    p.add_argument("--round-to", type=int, default=None, help="round kept channels to a multiple of this (e.g. 8)")
    p.add_argument("--attention", choices=("width", "heads"), default="width",
                   help="multi-head attention: narrow every head ('width', default) or remove whole heads ('heads')")
    p.add_argument("--head-dim-multiple", type=int, default=8,
                   help="with --attention width: round the kept head width to a multiple of this (1: exact rule)")
    p.add_argument("--widths", choices=("groups", "diffusers"), default="groups",
                   help="'groups': every dependency group its own kept count (the reference's rule); 'diffusers': "
                        "tie them so a diffusers UNet2DModel stays one its config describes (level 0 kept whole; "
                        "needed by 'ebsparse export --diffusers')")
    p.add_argument("--ignore", action="append", default=None, metavar="LAYER",
                   help="never prune this layer's output channels (repeatable); replaces the default, the output "
                        "layer, so name it too (the EB paper's DiT table: --ignore x_embedder.proj "
                        "--ignore final_layer.linear, i.e. the residual width stays whole)")
    p.add_argument("--t-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="Taylor: draw timesteps only from [LO, HI] (default: the whole schedule)")
    p.add_argument("--taylor-batch-size", type=int, default=16, help="Taylor: images per gradient batch")
    p.add_argument("--taylor-batches", type=int, default=1, help="Taylor: gradient batches summed")
    p.add_argument("--no-ema", action="store_true", help="score and keep the raw weights instead of the EMA")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave groups the pruner cannot shrink whole instead of failing")
    p.add_argument("--out", default=None,
                   help="output directory (default: runs/<run or config name>-pruned-<ratio>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing pruned model in the output directory")
    p.add_argument("--seed", type=int, default=0)


def _fmt(n: float, unit: str) -> str:
    return f"{n / 1e6:.2f}M" if unit == "M" else f"{n / 1e9:.2f}G"


def summary_table(before, after, inputs_meta) -> tuple[str, dict[str, Any]]:
    """Markdown table of params, MACs (papers' counter, batch 1) and layers changed."""
    import copy

    from torch import nn

    from ..metrics.counting import count_macs, count_params

    def macs(m):
        c = count_macs(copy.deepcopy(m).to("meta"), *inputs_meta)
        return c.macs, c.total

    p0, p1 = count_params(before), count_params(after)
    (m0, t0), (m1, t1) = macs(before), macs(after)
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
    ]
    if t0 != m0:  # attention matmuls (the DiT paper counts them; the U-Net papers do not)
        rows.append(f"| MACs with attention matmuls | {_fmt(t0, 'G')} | {_fmt(t1, 'G')} | {t0 / max(t1, 1):.2f}x |")
    rows.append(f"| layers changed | | {len(changed)} of {len(layers)} | |")
    return "\n".join(rows), {"params_before": p0, "params_after": p1, "macs_before": m0, "macs_after": m1,
                             "macs_with_attention_before": t0, "macs_with_attention_after": t1,
                             "layers_changed": len(changed), "layers": len(layers)}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..diffusion.config import load_config
    from ..models import build_model, example_inputs
    from ..pruning.config import PruningConfig
    from ..pruning.pipeline import prune
    from ..pruning.recipe import save_pruned

    from ..pruning.recipe import RECIPE_FILE

    if args.config is None and args.checkpoint is None:
        raise ValueError("prune: give --checkpoint (a trained run) or --config (fresh weights of its model)")
    torch.manual_seed(args.seed)
    step = None
    if args.checkpoint:
        from ..drivers.checkpoints import is_pruned_folder, model_from_checkpoint

        if is_pruned_folder(args.checkpoint):
            raise ValueError(f"--checkpoint {args.checkpoint} is already a pruned model; prune its dense checkpoint "
                             "with a larger --ratio instead")
        # The pruned model carries the weights it was scored on (the reference scores the EMA).
        model, cfg, meta = model_from_checkpoint(args.checkpoint, use_ema=not args.no_ema)
        if meta["pruned"]:
            raise ValueError(f"--checkpoint {args.checkpoint} is a fine-tuned pruned model; prune its dense "
                             "checkpoint with a larger --ratio instead")
        if args.config is not None and load_config(args.config).model != cfg.model:
            raise ValueError(f"checkpoint {args.checkpoint} does not match the model of {args.config}: it was "
                             f"trained with model {cfg.model}; omit --config to use the checkpoint's own config")
        if "sparsity" in cfg.algorithms:
            raise ValueError(f"checkpoint {args.checkpoint} is a sparse-to-sparse run; channel pruning needs a dense model")
        step = meta.get("step")
        source = f"{args.checkpoint} ({'model' if args.no_ema else 'ema'} weights)"
        ckpt = Path(args.checkpoint)
        name = Path(args.config).stem if args.config else (ckpt if ckpt.is_dir() else ckpt.parent).name
    else:
        cfg = load_config(args.config)
        model = build_model(cfg.model)
        source, name = "fresh weights", Path(args.config).stem
    spec = dict(cfg.model)
    out = Path(args.out) if args.out else Path("runs") / f"{name}-pruned-{args.ratio:g}"
    if (out / RECIPE_FILE).exists() and not args.force:
        raise FileExistsError(f"{str(out)!r} already holds a pruned model; pass --force to overwrite it or "
                              "choose another --out")
    model.eval()
    config = PruningConfig(pruning_ratio=args.ratio, importance=args.importance, round_to=args.round_to,
                           on_unsupported="skip" if args.skip_unsupported else "error",
                           taylor_t_range=tuple(args.t_range) if args.t_range else (0, cfg.diffusion.num_timesteps - 1),
                           taylor_batches=args.taylor_batches, attention=args.attention,
                           head_dim_multiple=args.head_dim_multiple, widths=args.widths, ignored_layers=args.ignore)
    inputs = example_inputs(spec)
    loss_fn = None
    if config.importance == "taylor":
        loss_fn = _taylor_loss(cfg, spec, config, args)
    result = prune(model, inputs, config, loss_fn=loss_fn)
    table, numbers = summary_table(model, result.model, example_inputs(spec, device="meta"))
    from ..drivers.checkpoints import EXPERIMENT_KEY

    save_pruned(out, result.model, result.mask, base=spec, example_inputs=inputs, config=config,
                extra={"source": source, "config_file": args.config, "step": step, EXPERIMENT_KEY: cfg.to_dict(),
                       **numbers})
    pruned_groups = sum(1 for k in result.mask if not bool(result.mask[k].all()))
    print(f"pruned {name} at ratio {args.ratio:g} ({args.importance}, from {source}); "
          f"{pruned_groups} of {len(list(result.mask))} dependency groups pruned")
    print(table)
    print(f"wrote {out / 'recipe.json'} and {out / 'model.safetensors'}; sample it with 'ebsparse sample {out}', "
          f"fine-tune it with 'ebsparse train CONFIG --init-from {out}'")
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
