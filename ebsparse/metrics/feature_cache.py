"""The domain FIDs' feature networks, trained once and kept as verified checkpoints.

A feature network trains deterministically in seconds, so it is cached under ``$EBSPARSE_CACHE``
(default ``~/.cache/ebsparse``) and reused. A cached file that does not read or verify is trained
again with a warning, never used: a wrong feature network gives a wrong FID without any error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from torch import nn

__all__ = ["cache_dir", "cached_network"]


def cache_dir() -> Path:
    return Path(os.environ.get("EBSPARSE_CACHE", Path.home() / ".cache" / "ebsparse"))


def cached_network(path: Path, empty: nn.Module, train: Callable[[], nn.Module], meta: dict, name: str,
                   cache: bool = True) -> nn.Module:
    """The network at ``path`` (loaded into ``empty``), or ``train()``'s, saved there with ``meta``;
    returned in eval mode. ``name`` is what the warning about an unusable cache calls it;
    ``cache=False`` trains and keeps nothing."""
    from ..diffusion.checkpoint import load_checkpoint, save_checkpoint

    if cache and path.is_file():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an unverifiable cache is rebuilt, not trusted
                tensors, _ = load_checkpoint(path)
            empty.load_state_dict(tensors)
            return empty.eval()
        except (ValueError, RuntimeError, UserWarning) as e:
            warnings.warn(f"the cached {name} is not usable ({e}); training it again", stacklevel=3)
    model = train()
    if cache:
        save_checkpoint(path, model.state_dict(), meta)
    return model.eval()
