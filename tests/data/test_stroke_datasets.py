"""KanjiVG (the kanjivg wheel's SVGs) and QuickDraw (.ndjson, sketch-rnn .npz) stroke datasets, and
the data section's checks."""

import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from ebsparse.data import DataConfig, build_dataset
from ebsparse.data.kanjivg import KanjiVGDataset, kanjivg_dir, list_kanjivg, load_kanji_strokes
from ebsparse.data.quickdraw import QuickDrawDataset, read_sketch_rnn_npz
from ebsparse.data.strokes import strokes_to_sequence
from ebsparse.diffusion.config import ExperimentConfig

# in code-point order: 一 (1 stroke), 三 (3), 二 (2), 口 (3), 川 (3), 木 (4), 語 (14)
CHARS = {"04e00": 1, "04e09": 3, "04e8c": 2, "053e3": 3, "05ddd": 3, "06728": 4, "08a9e": 14}


@pytest.fixture(scope="module")
def kanji_root(tmp_path_factory):
    """A few of the wheel's SVGs (and one variant form, which is skipped) in a folder of their own."""
    root = tmp_path_factory.mktemp("kanji")
    src = kanjivg_dir()
    for code in CHARS:
        shutil.copy(src / f"{code}.svg", root)
    shutil.copy(src / "04e00.svg", root / "04e00-Kaisho.svg")
    return root


def test_the_wheel_ships_the_svgs():
    folder = kanjivg_dir()
    files = list_kanjivg()
    assert len(files) > 6000 and files[0].parent == folder
    assert all("-" not in f.name for f in files)
    (stroke,) = load_kanji_strokes(folder / "04e00.svg")
    np.testing.assert_allclose(stroke[0], (11, 54.25))
    assert [len(load_kanji_strokes(folder / f"{c}.svg")) for c in CHARS] == list(CHARS.values())


def test_kanjivg_dataset(kanji_root):
    ds = KanjiVGDataset(seq_len=24, max_strokes=4, root=kanji_root)
    assert ds.images.shape == (6, 24, 3) and ds.images.dtype == torch.float32
    assert ds.labels.tolist() == [int(c, 16) for c in CHARS if CHARS[c] <= 4]  # 語 dropped, variant skipped
    assert set(ds.images[..., 2].unique().tolist()) == {-1.0, 1.0}
    assert (ds.images[..., 2] < 0).sum(1).tolist() == [n - 1 for n in CHARS.values() if n <= 4]  # one jump between strokes
    torch.testing.assert_close(ds.images[..., :2].pow(2).mean(), torch.tensor(1.0))  # velocities at unit RMS
    x, y = ds[2]
    assert x.shape == (24, 3) and y == 0x4E8C
    limited = KanjiVGDataset(seq_len=24, max_strokes=4, limit=3, root=kanji_root)
    assert limited.labels.tolist() == [0x4E00, 0x4E8C, 0x6728]  # spread over the code points
    short = KanjiVGDataset(seq_len=5, root=kanji_root)  # 3 strokes need at least 5 moves
    assert short.labels.tolist() == [int(c, 16) for c in CHARS if CHARS[c] <= 3]


def test_kanjivg_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        KanjiVGDataset(16, root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no KanjiVG SVGs"):
        KanjiVGDataset(16, root=tmp_path)
    (tmp_path / "04e00.svg").write_text("<svg")
    with pytest.raises(ValueError, match="04e00.svg' is not valid XML"):
        KanjiVGDataset(16, root=tmp_path)


def write_ndjson(path, drawings):
    path.write_text("".join(json.dumps({"word": "cat", "drawing": d}) + "\n" for d in drawings))


def stroke3(strokes):
    """Absolute strokes -> sketch-rnn stroke-3 (dx, dy, p) from the origin, p = 1 ending each stroke."""
    pts = np.concatenate(strokes)
    pen = np.concatenate([np.r_[np.zeros(len(s) - 1), 1] for s in strokes])
    d = np.diff(np.concatenate([[[0, 0]], pts]), axis=0)
    return np.concatenate([d, pen[:, None]], 1).astype(np.int16)


def object_array(items):
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


SKETCHES = [
    [np.array([[10, 10], [40, 10], [40, 30]]), np.array([[20, 50], [25, 60]])],
    [np.array([[0, 0], [5, 5]]), np.array([[9, 0], [9, 9]]), np.array([[3, 3], [4, 4], [4, 7]])],
    [np.array([[1, 2], [3, 4], [5, 4]])],
]


@pytest.fixture
def qd_root(tmp_path):
    write_ndjson(tmp_path / "full_simplified_cat.ndjson", [[[s[:, 0].tolist(), s[:, 1].tolist()] for s in sk]
                                                           for sk in SKETCHES])
    np.savez(tmp_path / "crab.npz", train=object_array([stroke3(sk) for sk in SKETCHES]),
             valid=object_array([stroke3(SKETCHES[0])]), test=object_array([stroke3(SKETCHES[2])]))
    return tmp_path


def test_quickdraw_ndjson_and_npz_give_the_same_sequences(qd_root):
    ds = QuickDrawDataset(qd_root, ["cat", "crab"], seq_len=16)
    assert ds.images.shape == (6, 16, 3) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(ds.images[:3], ds.images[3:])  # npz sketches start at the origin: same shape
    expected = np.stack([strokes_to_sequence(s, 16) for s in SKETCHES])
    expected[..., :2] /= ds.velocity_scale
    torch.testing.assert_close(ds.images[:3], torch.from_numpy(expected))
    capped = QuickDrawDataset(qd_root, ["crab"], seq_len=16, max_strokes=1, limit=2)
    assert len(capped) == 2 and (capped.images[..., 2] > 0).all()  # the first stroke only: no pen-up
    test_split = QuickDrawDataset(qd_root, ["crab"], seq_len=16, train=False)
    assert len(test_split) == 1


def test_quickdraw_through_the_config(qd_root):
    cfg = DataConfig.from_dict({"type": "quickdraw", "root": str(qd_root), "categories": ["cat"], "seq_len": 8})
    ds = build_dataset(cfg)
    assert ds.images.shape == (3, 8, 3)


def test_quickdraw_missing_paths_are_named(qd_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data.root '{tmp_path / 'absent'}' is not a directory"):
        QuickDrawDataset(tmp_path / "absent", ["cat"], 16)
    with pytest.raises(FileNotFoundError, match=r"no file for category 'dog' \(expected dog.ndjson or dog.npz\)"):
        QuickDrawDataset(qd_root, ["cat", "dog"], 16)
    with pytest.raises(ValueError, match="name at least one QuickDraw category"):
        QuickDrawDataset(qd_root, [], 16)
    (qd_root / "bad.ndjson").write_text('{"drawing": [[[1, 2]]]}\n')
    with pytest.raises(ValueError, match="bad.ndjson' line 1"):
        QuickDrawDataset(qd_root, ["bad"], 16)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_npz_pickles_may_only_rebuild_arrays(tmp_path, capsys):
    np.savez(tmp_path / "evil.npz", train=object_array([_Payload()]))
    with pytest.raises(ValueError, match="builtins.print; a sketch-rnn .npz holds numpy arrays only"):
        read_sketch_rnn_npz(tmp_path / "evil.npz")
    assert "must never run" not in capsys.readouterr().out
    np.savez(tmp_path / "plain.npz", train=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="expected an object array of sketches"):
        read_sketch_rnn_npz(tmp_path / "plain.npz")
    with zipfile.ZipFile(tmp_path / "none.npz", "w") as zf:
        zf.writestr("valid.npy", b"")
    with pytest.raises(ValueError, match=r"has no array 'train'; it holds \['valid'\]"):
        read_sketch_rnn_npz(tmp_path / "none.npz")
    assert pickle  # the payload class above is what np.savez pickles


@pytest.mark.parametrize("data, match", [
    ({"type": "quickdraw", "root": "x"}, "data.categories is required"),
    ({"type": "quickdraw", "categories": ["cat"]}, "data.root is required"),
    ({"type": "digits", "seq_len": 32}, r"data.seq_len applies to stroke datasets"),
    ({"type": "kanjivg", "random_flip": True}, "data.random_flip"),
    ({"type": "kanjivg", "channels": 3}, "data.channels must be 1"),
    ({"type": "kanjivg", "seq_len": 2}, "data.seq_len must be >= 3"),
    ({"type": "kanjivg", "limit": 0}, "data.limit must be a positive int"),
    ({"type": "kanjivg", "categories": ["cat"]}, "data.categories applies to data.type='quickdraw' only"),
    ({"type": "kanjivg", "max_strokes": "4"}, "data.max_strokes: expected an integer"),
])
def test_data_section_errors_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        DataConfig.from_dict(data)


def test_kanjivg_defaults():
    cfg = DataConfig.from_dict({"type": "kanjivg"})
    assert cfg.seq_len == 64 and cfg.root is None and cfg.is_strokes
    assert not DataConfig.from_dict({"type": "digits"}).is_strokes


def test_model_and_data_must_agree():
    with pytest.raises(ValueError, match="model.type='chirodiff' generates stroke sequences; data.type='digits'"):
        ExperimentConfig.from_dict({"model": {"type": "chirodiff"}, "data": {"type": "digits"}})
    with pytest.raises(ValueError, match="data.type='kanjivg' holds stroke sequences, which model.type='ddpm_unet'"):
        ExperimentConfig.from_dict({"model": {"type": "ddpm_unet"}, "data": {"type": "kanjivg"}})
    with pytest.raises(ValueError, match="model.point_dim=4"):
        ExperimentConfig.from_dict({"model": {"type": "chirodiff", "point_dim": 4}, "data": {"type": "kanjivg"}})
