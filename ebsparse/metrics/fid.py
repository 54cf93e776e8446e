"""FID with torch-fidelity (the ecosystem's standard implementation), from local Inception weights."""

from __future__ import annotations

import os
from pathlib import Path

from .inception_weights import find_inception_weights

__all__ = ["inception_fid"]


def inception_fid(generated: str | os.PathLike, reference: str | os.PathLike, weights_path: str | os.PathLike | None = None,
                  device: str = "cpu", batch_size: int = 64) -> float:
    """FID between two image folders with torch-fidelity's Inception (2048-d pool3 features).

    Raises FileNotFoundError naming the missing folder, or the weights file needed (see
    :mod:`ebsparse.metrics.inception_weights`). Images of any size are resized as torch-fidelity does.
    """
    for name, p in (("generated", generated), ("reference", reference)):
        if not Path(p).is_dir():
            raise FileNotFoundError(f"fid: {name} folder {str(p)!r} does not exist")
    weights = find_inception_weights(weights_path)
    try:
        import torch_fidelity
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("FID needs torch-fidelity: pip install torch-fidelity") from e
    metrics = torch_fidelity.calculate_metrics(
        input1=str(generated), input2=str(reference), fid=True, cuda=str(device).startswith("cuda"),
        batch_size=batch_size, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), verbose=False, save_cpu_ram=True,
    )
    return float(metrics["frechet_inception_distance"])
