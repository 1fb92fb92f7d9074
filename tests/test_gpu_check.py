"""experiments/gpu/check.py works before any GPU day: its --smoke run on the CPU (VGG19 x0.125,
generated images) prints the JSON line with every number the GPU run reports, and its data and
device choices fail with readable messages."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
import tarfile

import pytest
import torch
from PIL import Image
from support.procs import ROOT

from pruning.latency import torch_threads
from pruning.models import vgg19

_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "experiments/gpu/check.py")
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = check  # its dataclass looks its module up while being defined
_spec.loader.exec_module(check)

TIMINGS = (
    "dense_images_per_s",
    "pruned_images_per_s",
    "macs_speedup",
    "prune_s",
    "finetune_epoch_s",
    "projected_100_epochs_s",
    "total_s",
    *(f"{k}_b{b}" for b in (1, 64) for k in ("dense_latency_ms", "pruned_latency_ms")),
    "latency_speedup_b1",
    "latency_speedup_b64",
)
ACCURACIES = ("dense_val_acc", "val_acc_after_prune", "val_acc_after_recal", "val_acc")


def smoke(capsys, *args: str) -> dict:
    with torch_threads(1):  # 2 threads on the loaded 2-core test machine: 66 s instead of 2 s
        check.main(["--smoke", "--device", "cpu", *args])
    out = capsys.readouterr().out.strip().splitlines()
    got = json.loads(out[-1])  # the last line is the JSON line
    assert "JSON" not in out[-1] and any(line.startswith("training images/s") for line in out)
    return got


def test_smoke_run_reports_every_number(capsys) -> None:
    got = smoke(capsys)
    for key in TIMINGS:
        assert math.isfinite(got[key]) and got[key] > 0, key
    assert got["macs_speedup"] == pytest.approx(check.SPEEDUP, rel=0.01)
    assert got["projected_100_epochs_s"] == pytest.approx(100 * got["finetune_epoch_s"])
    assert got["device"] == "cpu" and got["smoke"] is True and got["baseline"] is None
    assert got["train_images"] == 320 and got["width"] == 0.125
    assert not set(ACCURACIES) & set(got)  # random init: no accuracy is reported


def test_smoke_run_with_a_baseline_reports_accuracy(capsys, tmp_path) -> None:
    baseline = tmp_path / "dense.pt"
    torch.save(vgg19(10, 0.125).state_dict(), baseline)
    got = smoke(capsys, "--baseline", str(baseline), "--json-out", str(tmp_path / "r.json"))
    assert all(0.0 <= got[key] <= 1.0 for key in ACCURACIES)
    assert got["baseline"] == str(baseline) and got["width"] is None
    assert json.loads((tmp_path / "r.json").read_text()) == got


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
def test_without_a_gpu_the_full_check_says_so() -> None:
    with pytest.raises(SystemExit, match="no CUDA device is visible.*--smoke"):
        check.main([])


def test_the_jpeg_tarball_is_unpacked_once(tmp_path) -> None:
    tarball = tmp_path / "jpegs.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ("train/cat/0.jpg", "train/dog/0.jpg"):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32)).save(buf, "JPEG")
            info = tarfile.TarInfo(name)
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    cache = tmp_path / "cache"
    root = check.jpeg_root(tarball, cache)
    assert root == cache / "cifar10-jpeg" and (root / "train/cat/0.jpg").is_file()
    assert not (cache / "cifar10-jpeg.partial").exists()
    tarball.unlink()
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        check.jpeg_root(tarball, tmp_path / "elsewhere")
    assert check.jpeg_root(root, tmp_path / "unused") == root  # a folder is taken as it is
    with pytest.raises(FileNotFoundError, match="no train/"):
        check.jpeg_root(tmp_path, cache)
