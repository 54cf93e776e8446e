"""Training the first stage of latent diffusion (``ebsparse train-autoencoder CONFIG``).

A config has three sections: ``autoencoder`` (:class:`~ebsparse.models.autoencoder.AutoencoderConfig`),
``data`` (:class:`~ebsparse.data.DataConfig`, the images) and ``training``
(:class:`AutoencoderTrainConfig`). The objective is a pixel reconstruction loss (L1 or L2) plus the
regulariser's term: codebook + commitment loss (``vq``) or ``kl_weight`` times the KL (``kl``). The
reference adds LPIPS and a patch discriminator; LPIPS needs downloaded VGG weights, so neither is here.

Two standard fixes keep a short VQ run from using only a handful of codes (codebook collapse, which
the reference's long runs and GAN loss tolerate): the codebook starts from encoder outputs of the
first batch, and every ``restart_every`` steps each code that no latent chose since the last check is
moved onto a random latent of the current batch.

After training the scale factor is measured (1 / std of the deterministic latents of the first
``scale_images`` images, the reference's ``scale_by_std``) and the model is written with it
(:func:`~ebsparse.diffusion.latents.save_autoencoder`), with ``reconstructions.png`` (originals above,
reconstructions below) and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .._config import config_from_dict
from ..data import DataConfig, build_dataset
from ..models.autoencoder import Autoencoder, AutoencoderConfig
from .images import save_grid
from .latents import AUTOENCODER_FILE, encode_dataset, save_autoencoder

__all__ = ["AutoencoderTrainConfig", "AutoencoderExperiment", "load_autoencoder_config", "train_autoencoder"]

REC_LOSSES = ("l1", "l2")


@dataclass
class AutoencoderTrainConfig:
    """``beta``: commitment weight (the reference's 0.25); ``kl_weight``: the reference's 1e-6;
    ``restart_every``: steps between dead-code restarts (0 = never; ``vq`` only)."""

    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    rec_loss: str = "l1"
    beta: float = 0.25
    kl_weight: float = 1e-6
    restart_every: int = 100
    scale_images: int = 1024
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"training.rec_loss={self.rec_loss!r}; expected one of {REC_LOSSES}")
        for name in ("batch_size", "steps", "scale_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"training.{name} must be a positive int, got {v!r}")
        for name in ("restart_every", "log_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"training.{name} must be an int >= 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        for name in ("beta", "kl_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class AutoencoderExperiment:
    autoencoder: AutoencoderConfig
    data: DataConfig
    training: AutoencoderTrainConfig

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AutoencoderExperiment":
        if not isinstance(d, Mapping):
            raise ValueError(f"an autoencoder config must be a mapping of sections, got {type(d).__name__}")
        unknown = sorted(set(d) - {"autoencoder", "data", "training"})
        if unknown:
            raise ValueError(f"config: unknown sections {unknown}; an autoencoder config has autoencoder, data, training")
        ae = AutoencoderConfig.from_dict(d.get("autoencoder", {}))
        data = DataConfig.from_dict(d.get("data", {}))
        if data.channels != ae.in_channels or data.channels != ae.out_ch:
            raise ValueError(f"data.channels={data.channels} must equal autoencoder.in_channels={ae.in_channels} and "
                             f"autoencoder.out_ch={ae.out_ch}")
        if data.image_size % ae.factor:
            raise ValueError(f"data.image_size={data.image_size} is not divisible by the autoencoder's down-sampling "
                             f"factor {ae.factor} (2 ** (len(autoencoder.ch_mult) - 1))")
        return cls(ae, data, config_from_dict(AutoencoderTrainConfig, d.get("training", {}), "training"))

    def to_dict(self) -> dict[str, Any]:
        training = asdict(self.training)
        training["betas"] = list(self.training.betas)
        return {"autoencoder": self.autoencoder.to_dict(), "data": self.data.to_dict(), "training": training}


def load_autoencoder_config(path: str | os.PathLike, overrides: list[str] | None = None) -> AutoencoderExperiment:
    """Read an autoencoder YAML config (``--set SECTION.KEY=VALUE`` overrides applied)."""
    import yaml

    from .config import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    raw = yaml.safe_load(path.read_text())
    apply_overrides(raw if isinstance(raw, dict) else {}, overrides or [])
    try:
        return AutoencoderExperiment.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config file {str(path)!r}: {e}") from e


def _batch(images: torch.Tensor | None, dataset, idx: torch.Tensor) -> torch.Tensor:
    if images is not None:
        return images[idx]
    return torch.stack([dataset[int(i)][0] for i in idx])


@torch.no_grad()
def _restart_codes(model: Autoencoder, latents: torch.Tensor, used: torch.Tensor, g: torch.Generator) -> int:
    """Move every code in ``~used`` onto a random latent vector of ``latents`` (B, C, h, w)."""
    dead = (~used).nonzero().flatten()
    if dead.numel():
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=g)
        model.quantize.embedding.weight[dead] = flat[pick]
    return int(dead.numel())


def train_autoencoder(exp: AutoencoderExperiment, out_dir: str | os.PathLike, device: str = "cpu",
                      progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Train, measure the scale factor, and write ``out_dir/autoencoder.safetensors`` (+ JSON),
    ``reconstructions.png`` and ``metrics.jsonl``. Refuses an ``out_dir`` that holds an autoencoder
    unless ``force`` (latent caches made from the old one are then detected as stale).
    Returns the summary that the JSON sidecar also records."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if (out_dir / AUTOENCODER_FILE).exists() and not force:
        raise FileExistsError(f"{str(out_dir / AUTOENCODER_FILE)!r} exists; pass --force to train a new one in "
                              "its place, or choose another --out")
    tc, cfg = exp.training, exp.autoencoder
    torch.manual_seed(tc.seed)
    g = torch.Generator().manual_seed(tc.seed)
    dataset = build_dataset(exp.data)
    if tc.batch_size > len(dataset):
        raise ValueError(f"training.batch_size={tc.batch_size} exceeds the dataset size {len(dataset)}")
    images = getattr(dataset, "images", None)
    images = images if isinstance(images, torch.Tensor) else None
    model = Autoencoder(cfg, beta=tc.beta).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    vq = cfg.regularizer == "vq"
    used = torch.zeros(cfg.n_embed, dtype=torch.bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "metrics.jsonl", "w", buffering=1)  # line-buffered: readable while it runs
    t0, last, restarted = time.time(), {}, 0
    order = torch.randperm(len(dataset), generator=g)
    pos = 0
    bar = tqdm(range(tc.steps), disable=not progress, desc="autoencoder", dynamic_ncols=True)
    try:
        for step in bar:
            if pos + tc.batch_size > len(order):
                order, pos = torch.randperm(len(dataset), generator=g), 0
            x = _batch(images, dataset, order[pos:pos + tc.batch_size]).to(device)
            pos += tc.batch_size
            model.train()
            if vq and step == 0:  # codebook from data: every code starts where latents are
                with torch.no_grad():
                    _restart_codes(model, model.moments(x).cpu(), torch.zeros_like(used), g)
            rec, reg, h = model(x)
            rec_loss = (rec - x).abs().mean() if tc.rec_loss == "l1" else F.mse_loss(rec, x)
            loss = rec_loss + (reg if vq else tc.kl_weight * reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if vq:  # the codes chosen before this step's update: close enough to count usage
                h = h.detach()
                with torch.no_grad():
                    used[model.quantize.codes(h).flatten().unique().cpu()] = True
                if tc.restart_every and (step + 1) % tc.restart_every == 0 and step + 1 < tc.steps:
                    restarted += _restart_codes(model, h.cpu(), used, g)
                    used[:] = False
            last = {"step": step + 1, "loss": float(loss.detach()), "rec_loss": float(rec_loss.detach()),
                    "reg": float(reg.detach()),
                    "elapsed_s": time.time() - t0}
            if not torch.isfinite(loss):
                raise FloatingPointError(f"autoencoder: loss became {float(loss)} at step {step + 1}; lower training.lr")
            if tc.log_every and (step + 1) % tc.log_every == 0:
                log.write(json.dumps(last) + "\n")
                bar.set_postfix({"rec": f"{last['rec_loss']:.4f}"})
    finally:
        bar.close()
        log.close()
    model.eval().requires_grad_(False)
    latents, _ = encode_dataset(model, dataset, batch_size=64, limit=tc.scale_images)
    scale = float(1.0 / latents.flatten().std())
    n_show = min(16, len(dataset))
    x = _batch(images, dataset, torch.arange(n_show)).to(device)
    with torch.no_grad():
        rec = model.decode(model.encode(x))
    save_grid(torch.cat([x, rec]).cpu(), out_dir / "reconstructions.png", nrow=n_show,
              caption=f"top: data, bottom: {cfg.regularizer}-f{cfg.factor} reconstructions")
    summary = {"steps": tc.steps, "final": last, "train_seconds": time.time() - t0, "scale_factor": scale,
               "latent_std": float(latents.flatten().std()), "latent_shape": list(latents.shape[1:])}
    if vq:
        with torch.no_grad():
            summary["codes_used"] = int(model.quantize.codes(latents.to(device)).unique().numel())
        summary["codes_restarted"] = restarted
    save_autoencoder(out_dir, model.cpu(), scale, {"experiment": exp.to_dict(), "summary": summary})
    return summary
