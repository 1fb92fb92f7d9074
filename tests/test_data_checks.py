"""Issue 15, item 10: data that cannot make an honest classifier, or an honest val split, are
refused with one readable error before any training, and `val_size` 1.0 is not one image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pruning import data
from pruning.data import VAL_SIZE_RULE, DataSpec, load_dataset, parse_val_size
from pruning.pretrain import load_pretrain_config


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))


def _folder(root: Path, classes: dict[str, int], split: str = "train") -> Path:
    """ROOT/<split>/<class>/<i>.png, `count` solid 16x16 images per class."""
    for c, (name, count) in enumerate(classes.items()):
        (root / split / name).mkdir(parents=True)
        for i in range(count):
            colour = tuple(255 if ch == c % 3 else 20 * i for ch in range(3))
            Image.new("RGB", (16, 16), colour).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("value", [1.0, 2.0, 5000.0])
def test_a_whole_float_val_size_explains_fraction_and_count(value: float) -> None:
    with pytest.raises(ValueError) as err:
        DataSpec(val_size=value)
    msg = str(err.value)
    assert msg.startswith(f"data.val_size={value!r} is invalid: ")
    assert VAL_SIZE_RULE in msg and f"write {int(value)} for a count" in msg


def test_val_size_1_0_in_a_config_file_is_refused_on_load(tmp_path: Path) -> None:
    config = tmp_path / "pretrain.yaml"
    config.write_text("data: {name: synthetic, val_size: 1.0}\nepochs: 1\n")
    with pytest.raises(ValueError, match=r"data\.val_size=1\.0 is invalid: a float in \(0, 1\)"):
        load_pretrain_config(config)
    assert load_pretrain_config(config, ["data.val_size=1"]).data.val_size == 1


def test_command_line_val_size_keeps_count_and_fraction_apart() -> None:
    assert parse_val_size("5000") == 5000 and isinstance(parse_val_size("5000"), int)
    assert parse_val_size("0.1") == 0.1
    assert isinstance(parse_val_size("1.0"), float)
    with pytest.raises(ValueError, match="val_size=1.0"):
        DataSpec(val_size=parse_val_size("1.0"))


def test_one_class_image_folder_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "one", {"cat": 12})
    with pytest.raises(ValueError) as err:
        load_dataset(DataSpec(name="imagefolder", root=str(root), val_size=2))
    msg = str(err.value)
    assert msg.startswith("data.name='imagefolder' is invalid: ")
    assert "1 class(es)" in msg and "at least 2" in msg and str(root) in msg


def test_a_class_folder_without_images_does_not_count(tmp_path: Path) -> None:
    root = _folder(tmp_path / "empty", {"cat": 12})
    (root / "train" / "dog").mkdir()  # listed as a class, but holds no image
    with pytest.raises(ValueError, match=r"1 class\(es\) \(2 listed\)"):
        load_dataset(DataSpec(name="imagefolder", root=str(root), val_size=2))


def test_carved_val_smaller_than_the_class_count_is_refused() -> None:
    spec = DataSpec(name="synthetic", num_classes=10, samples=40, val_size=5)
    with pytest.raises(ValueError) as err:
        load_dataset(spec)
    msg = str(err.value)
    assert msg.startswith("data.val_size=5 is invalid: it carves 5 val images for 10 classes")
    assert "count >= 10" in msg
    with pytest.raises(ValueError, match="carves 4 val images for 10 classes"):
        load_dataset(DataSpec(name="synthetic", num_classes=10, samples=40, val_size=0.1))
    assert len(load_dataset(DataSpec(num_classes=10, samples=40, val_size=10)).val.labels) == 10


def test_own_val_split_smaller_than_the_class_count_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "own", {"ant": 4, "bee": 4, "cat": 4})
    _folder(root, {"ant": 1, "bee": 1}, split="val")  # 2 val images for 3 classes
    with pytest.raises(ValueError) as err:
        load_dataset(DataSpec(name="imagefolder", root=str(root)))
    assert "own val/ split holds 2 val images for 3 classes" in str(err.value)
    assert str(err.value).startswith("data.root=")


def test_checks_run_before_any_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The class check needs only the loaded labels: it raises before the carve and the stats."""

    def no_stats(images: torch.Tensor) -> None:
        raise AssertionError("statistics were computed for refused data")

    monkeypatch.setattr(data, "_channel_stats", no_stats)
    monkeypatch.setattr(data, "_stratified_mask", no_stats)
    with pytest.raises(ValueError, match="carves 5 val images for 10 classes"):
        load_dataset(DataSpec(name="synthetic", num_classes=10, samples=40, val_size=5))
