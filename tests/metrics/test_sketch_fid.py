"""The sketch domain FID (ChiroDiff's samples): the same distribution scores far below a different
one, the feature network is cached per reference set and rebuilt when corrupted, and the two entry
points (a run's samples; two PNG folders) agree with the function they wrap."""

import math
import warnings

import numpy as np
import pytest
import torch

from ebsparse.cli import main
from ebsparse.data import DataConfig
from ebsparse.data.strokes import render_sequences, strokes_to_sequence
from ebsparse.diffusion.images import save_images
from ebsparse.metrics import sketch_fid as sf
from ebsparse.metrics.feature_cache import cache_dir
from ebsparse.metrics.sample_fid import as_saved, has_domain_fid, samples_fid

SIZE = 32


@pytest.fixture(autouse=True)
def _setup(isolated_cache, one_thread):
    yield


def _sequences(n: int, seed: int, kind: str) -> torch.Tensor:
    """'shapes': an arc and a crossing line per sketch, random sizes; 'zigzag': jagged polylines."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "shapes":
            a = np.linspace(0, rng.uniform(np.pi, 2 * np.pi), 12)
            arc = np.stack([np.cos(a), np.sin(a)], 1) * rng.uniform(0.5, 1.0)
            line = np.array([[-1.0, rng.uniform(-1, 1)], [1.0, rng.uniform(-1, 1)]])
            strokes = [arc, line]
        else:
            strokes = [np.cumsum(rng.normal(size=(10, 2)), 0)]
        out.append(strokes_to_sequence(strokes, 32))
    return torch.from_numpy(np.stack(out))


def _render(seqs):
    return as_saved(render_sequences(seqs, SIZE))


def test_same_distribution_scores_far_below_a_different_one():
    reference = _render(_sequences(200, 0, "shapes"))
    same = _render(_sequences(200, 1, "shapes"))
    other = _render(_sequences(200, 2, "zigzag"))
    fid_same, fid_other = sf.sketch_fid(same, reference), sf.sketch_fid(other, reference)
    assert math.isfinite(fid_same) and fid_same >= 0
    assert fid_other > 5 * fid_same


def test_encoder_is_cached_per_reference_and_a_corrupted_cache_is_retrained(monkeypatch):
    reference = _render(_sequences(64, 0, "shapes"))
    first = sf.sketch_encoder(reference)
    with monkeypatch.context() as m:
        m.setattr(sf, "_train", lambda *a, **k: pytest.fail("a cached encoder was trained again"))
        again = sf.sketch_encoder(reference)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    cache = cache_dir() / f"{sf._key(reference)}.safetensors"
    cache.write_bytes(cache.read_bytes()[:-16] + b"\0" * 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = sf.sketch_encoder(reference)
    assert any("not usable" in str(w.message) for w in caught)
    for a, b in zip(first.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)  # deterministic training: the same network again


def test_samples_fid_scores_sketch_runs_against_their_training_set():
    class Sequences:  # what a stroke dataset exposes
        images = _sequences(80, 0, "shapes")

    data = DataConfig.from_dict({"type": "kanjivg", "seq_len": 32, "image_size": SIZE})
    samples = render_sequences(_sequences(80, 3, "shapes"), SIZE)  # what sample_images returns
    assert has_domain_fid("kanjivg") and has_domain_fid("quickdraw")
    value = samples_fid(samples, data, Sequences())
    # scored as saved: the samples rounded to 8 bits, against the training sequences rendered alike
    assert value == pytest.approx(sf.sketch_fid(as_saved(samples), _render(Sequences.images)), rel=1e-6)
    with pytest.raises(ValueError, match="DataConfig"):
        samples_fid(samples, "kanjivg")


def test_cli_scores_two_png_folders(tmp_path, capsys):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    save_images(render_sequences(_sequences(40, 1, "shapes"), SIZE), gen)
    save_images(render_sequences(_sequences(40, 0, "shapes"), SIZE), ref)
    assert main(["fid", str(gen), str(ref), "--domain", "sketch"]) == 0
    value = float(capsys.readouterr().out.strip().split()[-1])
    assert value == pytest.approx(sf.sketch_fid_from_folders(gen, ref), rel=1e-5)
    with pytest.raises(ValueError, match="S >= 8"):
        sf.sketch_fid(torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 4, 4))
