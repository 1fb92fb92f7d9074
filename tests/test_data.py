"""Tests for pruning.data: spec checks, CIFAR through torchvision, splits, ImageFolder, batches."""

from __future__ import annotations

import math
import os
import pickle
import re
import struct
import threading
import urllib.error
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from support.procs import subprocess_env

from pruning import data
from pruning.data import DATASETS, BatchLoader, DataSpec, RawData, Split, load_dataset
from pruning.registry import Registry


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default data and cache folders point into tmp_path: tests never touch ~/.cache.
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))


# --- DataSpec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "imagenet"),
        ("root", ""),
        ("download", "yes"),
        ("val_size", 0),
        ("val_size", -0.1),
        ("val_size", 1.5),
        ("val_size", float("nan")),
        ("val_size", True),
        ("val_size", 1.0),  # a float is a fraction: 1 image is written 1
        ("val_size", 500.0),
        ("split_seed", -1),
        ("split_seed", 1.0),
        ("train_subset", 0),
        ("train_subset", 2.5),
        ("num_classes", 1),
        ("samples", 19),  # fewer than 2 per class for the default 10 classes
        ("image_size", 4),
        ("image_size", 32.0),
    ],
)
def test_bad_spec_value_is_named_in_error(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^data\.{field}=") as err:
        DataSpec(**{field: value})  # type: ignore[arg-type]
    assert repr(value) in str(err.value)
    assert "is invalid: " in str(err.value)


@pytest.mark.parametrize("val_size", [0.5, 1, 500])
def test_good_val_sizes_are_accepted(val_size: float) -> None:
    assert DataSpec(val_size=val_size).val_size == val_size


def test_unknown_name_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DATASETS.names() == ("cifar100", "cifar10", "imagefolder", "synthetic")
    with pytest.raises(ValueError) as err:
        DataSpec(name="cifar11")
    assert all(name in str(err.value) for name in DATASETS.names())
    assert "did you mean 'cifar10'?" in str(err.value)
    spec = DataSpec(name="synthetic")
    # The registry can change after validation.
    without = Registry("dataset", {n: DATASETS[n] for n in DATASETS if n != "synthetic"})
    monkeypatch.setattr(data, "DATASETS", without)
    with pytest.raises(ValueError, match=r"one of: cifar100, cifar10, imagefolder$"):
        load_dataset(spec)


# --- CIFAR in the official file format, read by torchvision's own code ----------------------------


class _Py2Str(str):
    """A string that the official CIFAR pickles hold as a Python 2 byte string."""


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    # The official files were pickled by Python 2: their keys and names read back as b'data' with
    # encoding='bytes' and as 'data' with torchvision's encoding='latin1'. Emit the same opcodes.
    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: _Py2Str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[_Py2Str] = _save_py2_str


def _dump_py2(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _cifar_batch(rng: np.random.Generator, n: int, cifar100: bool, used: int) -> dict:
    labels = [i % used for i in range(n)]
    batch = {
        "batch_label": _Py2Str("tiny batch"),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),  # (N, 3*32*32), planes R, G, B
        "filenames": [_Py2Str(f"img_{i}.png") for i in range(n)],
    }
    if cifar100:
        batch |= {"fine_labels": labels, "coarse_labels": [label // 5 for label in labels]}
    else:
        batch["labels"] = labels
    return {_Py2Str(key): value for key, value in batch.items()}


def _write_cifar(root: Path, name: str, n_train: int = 50, n_test: int = 20, used: int = 5) -> dict:
    """Tiny CIFAR files in the official format, using `used` classes; returns what was written."""
    cifar100 = name == "cifar100"
    cls = torchvision.datasets.CIFAR100 if cifar100 else torchvision.datasets.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_files = [file for file, _ in cls.train_list]  # CIFAR-10 spreads train over 5 batches
    train = [_cifar_batch(rng, n_train // len(train_files), cifar100, used) for _ in train_files]
    for file, batch in zip(train_files, train, strict=True):
        _dump_py2(batch, folder / file)
    test = _cifar_batch(rng, n_test, cifar100, used)
    _dump_py2(test, folder / cls.test_list[0][0])
    classes = [f"{name}_class_{i}" for i in range(100 if cifar100 else 10)]
    if cifar100:
        meta = {
            "fine_label_names": classes,
            "coarse_label_names": [f"super_{i}" for i in range(20)],
        }
    else:
        meta = {"label_names": classes, "num_cases_per_batch": 10, "num_vis": 3072}
    meta = {
        _Py2Str(k): [_Py2Str(s) for s in v] if isinstance(v, list) else v for k, v in meta.items()
    }
    _dump_py2(meta, folder / cls.meta["filename"])
    label_key = "fine_labels" if cifar100 else "labels"
    return {
        "folder": folder,
        "train_files": train_files,
        "classes": classes,
        "train_labels": [label for batch in train for label in batch[label_key]],
        "test_pixels": test["data"],
        "test_labels": test[label_key],
    }


def _skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the md5 comparison is replaced (by an existence check): tiny files cannot match the
    # official checksums. Both _check_integrity and _load_meta call this function.
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_cifar_official_format_loads_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    written = _write_cifar(tmp_path / name, name)
    with open(written["folder"] / written["train_files"][0], "rb") as f:
        assert b"data" in pickle.load(f, encoding="bytes")  # byte-string keys, as in the originals
    _skip_md5(monkeypatch)
    ds = load_dataset(DataSpec(name=name, root=str(tmp_path / name), val_size=10))
    assert ds.train.images.shape == (40, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.val.images.shape == (10, 3, 32, 32) and ds.train.labels.dtype == torch.int64
    assert ds.classes == written["classes"] and ds.num_classes == len(written["classes"])
    assert torch.bincount(ds.val.labels).tolist() == [2] * 5  # 5 classes used, 10 each in train
    pooled = ds.train.labels.tolist() + ds.val.labels.tolist()
    assert sorted(pooled) == sorted(written["train_labels"])
    assert ds.test is not None and ds.test.labels.tolist() == written["test_labels"]
    # The test split keeps file order, so the (N, 3072) planes must come back as (N, 3, 32, 32).
    expected = torch.from_numpy(written["test_pixels"].reshape(-1, 3, 32, 32))
    assert torch.equal(ds.test.images, expected)
    assert str(written["folder"]) in ds.description


@pytest.mark.parametrize(
    ("name", "root", "folder"),
    [
        ("cifar100", "given", "given/cifar-100-python"),
        ("cifar10", "given", "given/cifar-10-batches-py"),
        ("cifar100", None, "data/cifar100/cifar-100-python"),  # $PRUNETUNE_DATA/<name>
    ],
)
def test_missing_cifar_files_say_where_and_how(
    tmp_path: Path, name: str, root: str | None, folder: str
) -> None:
    spec = DataSpec(name=name, root=None if root is None else str(tmp_path / root))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(spec)
    message = str(err.value)
    assert str(tmp_path / folder) in message
    assert "download=true" in message and ".tar.gz" in message


def test_failed_download_is_reported_as_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="no network here") as err:
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path), download=True))
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


# --- val carve, train subset, statistics ----------------------------------------------------------


def _use_numbered_data(monkeypatch: pytest.MonkeyPatch, counts: list[int]) -> None:
    """Register as 'synthetic' a loader whose image i carries i in its first two pixels."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    ids = torch.arange(len(labels))
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)  # (N, 3, 8, 8) uint8
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    raw = RawData(Split(images, labels), None, [f"c{i}" for i in range(len(counts))], "numbered")
    loaders = {n: DATASETS[n] for n in DATASETS} | {"synthetic": lambda spec: raw}
    monkeypatch.setattr(data, "DATASETS", Registry("dataset", loaders))


def _ids(split: Split) -> list[int]:
    pixels = split.images[:, 0, 0].long()  # (N, 8) first rows of channel 0
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


@pytest.mark.parametrize(
    ("counts", "val_size"),
    [([150, 100, 50], 0.2), ([150, 100, 50], 30), ([100, 100, 3], 0.05), ([7, 5, 9, 4], 0.5)],
)
def test_val_carve_is_disjoint_stratified_and_seeded(
    monkeypatch: pytest.MonkeyPatch, counts: list[int], val_size: float
) -> None:
    _use_numbered_data(monkeypatch, counts)
    ds = load_dataset(DataSpec(val_size=val_size))
    train, val = _ids(ds.train), _ids(ds.val)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(sum(counts)))
    n_val = round(val_size * sum(counts)) if val_size < 1 else int(val_size)
    per_class = torch.bincount(ds.val.labels, minlength=len(counts))
    assert int(per_class.sum()) == n_val and int(per_class.min()) >= 1
    quota = torch.tensor(counts) * n_val / sum(counts)
    assert bool(((per_class - quota).abs() < 1).all())  # proportional up to rounding
    assert _ids(load_dataset(DataSpec(val_size=val_size)).val) == val
    other = load_dataset(DataSpec(val_size=val_size, split_seed=1))
    assert _ids(other.val) != val
    assert torch.equal(torch.bincount(other.val.labels, minlength=len(counts)), per_class)


def test_train_subset_is_stratified_and_keeps_val(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_numbered_data(monkeypatch, [150, 100, 50])
    full = load_dataset(DataSpec(val_size=0.2))
    sub = load_dataset(DataSpec(val_size=0.2, train_subset=60))
    assert torch.bincount(sub.train.labels).tolist() == [30, 20, 10]
    assert set(_ids(sub.train)) <= set(_ids(full.train))
    assert _ids(sub.val) == _ids(full.val)
    assert "train 60 (subset)" in sub.description
    with pytest.raises(ValueError, match="train_subset=241"):
        load_dataset(DataSpec(val_size=0.2, train_subset=241))
    with pytest.raises(ValueError, match="val_size=300"):
        load_dataset(DataSpec(val_size=300))


def test_mean_std_are_train_channel_statistics() -> None:
    ds = load_dataset(DataSpec(samples=200))
    pixels = ds.train.images.double() / 255  # (N, 3, 32, 32) in [0, 1]
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(torch.tensor(ds.mean, dtype=torch.float64), expected_mean, atol=1e-12)
    assert torch.allclose(torch.tensor(ds.std, dtype=torch.float64), expected_std, atol=1e-9)


# --- synthetic ------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_learnable() -> None:
    a, b = load_dataset(DataSpec()), load_dataset(DataSpec())
    for x, y in [(a.train, b.train), (a.val, b.val), (a.test, b.test)]:
        assert x is not None and y is not None
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert a.test is not None and a.test.images.shape == (400, 3, 32, 32)
    reseeded = load_dataset(DataSpec(split_seed=1))
    assert not torch.equal(reseeded.val.images, a.val.images)
    assert reseeded.test is not None and torch.equal(reseeded.test.images, a.test.images)
    # Nearest class mean on raw pixels: far above chance (0.1), yet the classes are not separable.
    flat = a.train.images.flatten(1).float()
    means = torch.stack([flat[a.train.labels == c].mean(0) for c in range(10)])
    guess = torch.cdist(a.val.images.flatten(1).float(), means).argmin(1)
    accuracy = (guess == a.val.labels).float().mean().item()
    assert 0.6 < accuracy < 1.0


def test_synthetic_follows_spec_sizes() -> None:
    ds = load_dataset(DataSpec(num_classes=4, samples=80, image_size=16, val_size=8))
    assert ds.classes == ["class0", "class1", "class2", "class3"] and ds.num_classes == 4
    assert ds.train.images.shape == (72, 3, 16, 16) and ds.val.images.shape == (8, 3, 16, 16)
    assert "not real images" in ds.description


# --- imagefolder ----------------------------------------------------------------------------------

_COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}


def _make_folder(root: Path, splits: tuple[str, ...], per_class: int = 6) -> None:
    """Solid-colour images, class c in colour channel c; a mix of PNG/JPEG, RGB/RGBA, sizes."""
    for split in splits:
        for name, colour in _COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (32, 32) if i % 3 else (40, 24)  # every third image needs a resize
                if i % 2:
                    Image.new("RGBA", size, (*colour, 255)).save(folder / f"{i}.png")
                else:
                    Image.new("RGB", size, colour).save(folder / f"{i}.jpg", quality=95)


def _colour_matches_label(split: Split) -> bool:
    dominant = split.images.float().mean(dim=(2, 3)).argmax(1)  # (N,) brightest channel
    return torch.equal(dominant, split.labels)


def test_imagefolder_decodes_resizes_and_reuses_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "folder"
    _make_folder(root, ("train",))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    spec = DataSpec(name="imagefolder", root=str(root), val_size=3)
    first = load_dataset(spec)
    assert first.classes == ["ant", "bee", "cat"] and first.test is None
    assert first.train.images.shape == (15, 3, 32, 32) and first.val.images.shape == (3, 3, 32, 32)
    assert first.val.labels.sort().values.tolist() == [0, 1, 2]
    assert _colour_matches_label(first.train) and _colour_matches_label(first.val)
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1

    def no_decoding(path: str, size: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} again instead of reading the cache")

    monkeypatch.setattr(data, "_decode_one", no_decoding)
    second = load_dataset(spec)
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.val.labels, first.val.labels)

    decoded: list[str] = []  # a new file changes the cache key, so everything is decoded again
    monkeypatch.setattr(
        data,
        "_decode_one",
        lambda path, size: decoded.append(path) or np.zeros((size, size, 3), np.uint8),
    )
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "train" / "bee" / "new.png")
    assert len(load_dataset(spec).train.labels) == 16 and len(decoded) == 19


def test_imagefolder_concurrent_loads_decode_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_folder(tmp_path / "folder", ("train",))
    real_decode, decoded = data._decode_one, []
    monkeypatch.setattr(
        data, "_decode_one", lambda p, size: decoded.append(p) or real_decode(p, size)
    )
    spec = DataSpec(name="imagefolder", root=str(tmp_path / "folder"), val_size=3)
    results: list[data.Dataset] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_dataset(spec))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and torch.equal(results[0].train.images, results[1].train.images)
    assert len(decoded) == 18  # the file lock made the second loader wait, then read the cache


def test_imagefolder_uses_own_val_and_test(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    _make_folder(root, ("train", "val", "test"), per_class=4)
    ds = load_dataset(DataSpec(name="imagefolder", root=str(root), image_size=16))
    assert ds.train.images.shape == (12, 3, 16, 16) and ds.val.images.shape == (12, 3, 16, 16)
    assert ds.test is not None and ds.test.images.shape == (12, 3, 16, 16)
    assert _colour_matches_label(ds.val) and _colour_matches_label(ds.test)
    assert "own val split" in ds.description


def test_imagefolder_without_train_explains_layout(tmp_path: Path) -> None:
    (tmp_path / "folder" / "val" / "ant").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape("ROOT/train/<class>/<image>")) as err:
        load_dataset(DataSpec(name="imagefolder", root=str(tmp_path / "folder")))
    assert str(tmp_path / "folder" / "train") in str(err.value)


# --- BatchLoader ----------------------------------------------------------------------------------

_IDENTITY = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # normalised values = raw pixel values


def _random_split(n: int, size: int = 8) -> Split:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return Split(images, torch.arange(n) % 3)


def test_batches_are_normalised_with_partial_last_batch() -> None:
    split = _random_split(10)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = BatchLoader(split, 4, mean, std, augment=False, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (10, 3, 8, 8)
    restored = 255 * (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1))
    assert torch.allclose(restored, split.images.float(), atol=1e-3)
    assert torch.equal(y, split.labels)


def test_dataset_statistics_normalise_to_zero_mean_unit_std() -> None:
    ds = load_dataset(DataSpec(samples=200))
    loader = BatchLoader(ds.train, 64, ds.mean, ds.std, augment=False, shuffle=True)
    x = torch.cat([x for x, _ in loader]).double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-3)


def test_shuffled_batches_keep_labels_with_images() -> None:
    split = _random_split(20)
    x, y = zip(*BatchLoader(split, 6, *_IDENTITY, augment=False, shuffle=True), strict=True)
    flat, labels = torch.cat(x).round().flatten(1), torch.cat(y)
    order = [int((split.images.flatten(1).float() == row).all(1).nonzero()[0]) for row in flat]
    assert sorted(order) == list(range(20)) and order != list(range(20))
    assert torch.equal(labels, split.labels[order])


def test_augment_is_a_padded_crop_or_its_mirror() -> None:
    split = _random_split(16)
    ((x, _),) = list(BatchLoader(split, 16, *_IDENTITY, augment=True, shuffle=False, seed=3))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    padded = F.pad(split.images, (4, 4, 4, 4)).float()  # (16, 3, 16, 16), zero border
    windows = [padded[:, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
    flipped = [window.flip(3) for window in windows]
    x = x.round()
    plain = [any(torch.equal(x[i], w[i]) for w in windows) for i in range(16)]
    mirrored = [any(torch.equal(x[i], w[i]) for w in flipped) for i in range(16)]
    assert all(p or m for p, m in zip(plain, mirrored, strict=True))
    assert any(mirrored) and any(plain)
    changed = sum(not torch.equal(x[i], split.images[i].float()) for i in range(16))
    assert changed >= 12  # unchanged needs the centre crop and no flip: 1 in 162


def test_batch_order_is_reproducible_per_seed_and_epoch() -> None:
    split = _random_split(50)

    def epochs(seed: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        loader = BatchLoader(split, 8, *_IDENTITY, augment=True, shuffle=True, seed=seed)
        return [list(loader), list(loader)]

    def same(a: list, b: list) -> bool:
        pairs = zip(a, b, strict=True)
        return all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in pairs)

    run, rerun, other = epochs(0), epochs(0), epochs(1)
    assert same(run[0], rerun[0]) and same(run[1], rerun[1])
    assert not same(run[0], run[1]) and not same(run[0], other[0])
    # An abandoned epoch does not shift the next one.
    loader = BatchLoader(split, 8, *_IDENTITY, augment=True, shuffle=True, seed=0)
    next(iter(loader))
    assert same(list(loader), run[1])
    assert len(loader) == math.ceil(50 / 8)


@pytest.mark.parametrize(("batch_size", "seed"), [(0, 0), (2.0, 0), (4, -1)])
def test_batchloader_rejects_bad_arguments(batch_size: int, seed: int) -> None:
    with pytest.raises(ValueError, match="batch_size" if seed == 0 else "seed"):
        BatchLoader(
            _random_split(4), batch_size, *_IDENTITY, augment=False, shuffle=False, seed=seed
        )


def test_two_processes_loading_together_share_one_valid_cache(tmp_path: Path) -> None:
    """Two trials starting at once on a node: both load, the cache is written once and valid."""
    import subprocess
    import sys

    _make_folder(tmp_path / "folder", ("train",))
    env = subprocess_env(PRUNETUNE_CACHE=str(tmp_path / "cache"))
    code = (
        "import sys; from pruning.data import DataSpec, load_dataset; "
        "d = load_dataset(DataSpec(name='imagefolder', root=sys.argv[1], val_size=3)); "
        "print(int(d.train.images.sum()) + int(d.val.images.sum()))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "folder")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert outs[0][0] == outs[1][0]
    caches = list((tmp_path / "cache").glob("*"))
    assert len([c for c in caches if not c.name.endswith(".lock")]) == 1
    again = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "folder")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and again.stdout == outs[0][0]
