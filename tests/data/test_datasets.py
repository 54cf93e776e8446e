"""Datasets: the embedded digits, image folders, CIFAR-10 batches; clear errors for bad data."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ebsparse.data import DataConfig, build_dataset
from ebsparse.data.cifar10 import load_cifar10_batches
from ebsparse.data.digits import load_digits_tensor
from ebsparse.data.image_folder import ImageFolderDataset


@pytest.mark.parametrize("size, channels", [(16, 1), (32, 3)])
def test_digits(size, channels):
    x, y = load_digits_tensor(size, channels)
    assert x.shape == (1797, channels, size, size) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert sorted(set(y.tolist())) == list(range(10))
    ds = build_dataset(DataConfig(type="digits", image_size=size, channels=channels))
    img, label = ds[5]
    assert torch.equal(img, x[5]) and label == int(y[5])


def test_digits_errors():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_digits_tensor(16, 2)
    with pytest.raises(ValueError, match="image_size"):
        load_digits_tensor(4, 1)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i, (w, h) in enumerate([(20, 10), (10, 10), (12, 30)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, image_size=8, channels=3)
    assert len(ds) == 3
    x, _ = ds[1]
    assert x.shape == (3, 8, 8) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    white = tmp_path / "white"
    white.mkdir()
    Image.fromarray(np.full((4, 4), 255, dtype=np.uint8)).save(white / "w.png")
    assert torch.equal(ImageFolderDataset(white, 4, 1)[0][0], torch.ones(1, 4, 4))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 8)
    with pytest.raises(FileNotFoundError, match="contains no images"):
        ImageFolderDataset(tmp_path, 8)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolderDataset(tmp_path, 8)[0]


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": []}, f, protocol=2)
    return data, labels


def test_cifar10_batches(tmp_path):
    written = [_write_batch(tmp_path / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    _write_batch(tmp_path / "test_batch", 3, 9)
    x, y = load_cifar10_batches(tmp_path)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[4].flatten(), torch.from_numpy(written[1][0][0]))  # channel-major layout kept
    assert y.tolist() == sum((w[1] for w in written), [])
    ds = build_dataset(DataConfig.from_dict({"type": "cifar10", "root": str(tmp_path), "train": False}))
    img, _ = ds[0]
    assert len(ds) == 3 and img.shape == (3, 32, 32) and -1 <= float(img.min()) <= float(img.max()) <= 1


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10_batches(tmp_path / "nowhere")
    _write_batch(tmp_path / "data_batch_1", 2, 0)
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        load_cifar10_batches(tmp_path)
    for i in range(2, 6):
        _write_batch(tmp_path / f"data_batch_{i}", 2, i)
    (tmp_path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3.*not a valid python batch"):
        load_cifar10_batches(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        load_cifar10_batches(tmp_path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_cifar10_refuses_code_in_pickles(tmp_path):
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", 2, i)
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="posix.getcwd"):
        load_cifar10_batches(tmp_path)


def test_data_config_errors():
    with pytest.raises(ValueError, match="data.type='lsun'"):
        DataConfig(type="lsun")
    with pytest.raises(ValueError, match="32x32x3"):
        DataConfig.from_dict({"type": "cifar10", "root": "x", "image_size": 64})
    with pytest.raises(ValueError, match="unknown keys"):
        DataConfig.from_dict({"type": "digits", "size": 3})


def test_celeba_crop_box(tmp_path):
    arr = np.zeros((218, 178, 3), dtype=np.uint8)
    arr[57:185, 25:153] = 255  # exactly the DDIM face box
    Image.fromarray(arr).save(tmp_path / "face.png")
    x, _ = ImageFolderDataset(tmp_path, 64, 3, crop="celeba")[0]
    assert torch.equal(x, torch.ones(3, 64, 64))
    Image.fromarray(arr[:100]).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="178x218"):
        ImageFolderDataset(tmp_path, 64, 3, crop="celeba")[1]
    with pytest.raises(ValueError, match="crop='middle'"):
        ImageFolderDataset(tmp_path, 64, 3, crop="middle")
