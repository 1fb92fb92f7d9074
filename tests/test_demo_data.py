"""`make demo`'s data choice (issue 15, item 16): the shared JPEG copy, else CIFAR-10 through
torchvision's download when the network answers, else generated data; the first line says which
and why. The network check is stubbed; the download itself is tested in test_data.py."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

from PIL import Image
from support.procs import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import demo_data


def _never() -> bool:
    raise AssertionError("the network must not be asked when the JPEG copy is there")


def test_the_shared_jpeg_copy_comes_first(tmp_path) -> None:
    tarball = tmp_path / "cifar10-train-jpeg.tar.gz"
    tarball.write_bytes(b"")
    data = demo_data.choose(tarball, tmp_path / "cache", online=_never)
    root = tmp_path / "cache" / "cifar10-jpeg"
    assert data.overrides == ("data.name=imagefolder", f"data.root={root}")
    assert "real CIFAR-10" in data.reason and str(tarball) in data.reason
    assert data.unpack == tarball


def test_without_the_copy_the_download_when_the_network_answers(tmp_path) -> None:
    data = demo_data.choose(tmp_path / "absent.tar.gz", tmp_path / "cache", online=lambda: True)
    root = tmp_path / "cache" / "cifar10"
    assert data.overrides == ("data.name=cifar10", f"data.root={root}", "data.download=true")
    assert "torchvision's download" in data.reason and "answered" in data.reason


def test_a_copy_downloaded_before_needs_no_network(tmp_path) -> None:
    (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    data = demo_data.choose(tmp_path / "absent.tar.gz", tmp_path / "cache", online=_never)
    assert data.overrides[0] == "data.name=cifar10" and "downloaded earlier" in data.reason


def test_offline_without_the_copy_uses_generated_data_and_says_so(tmp_path) -> None:
    data = demo_data.choose(tmp_path / "absent.tar.gz", tmp_path / "cache", online=lambda: False)
    assert data.overrides == ("data.name=synthetic",)
    assert data.reason.startswith("demo data: GENERATED images")
    assert "did not answer" in data.reason and "SHARED_CIFAR10" in data.reason


def test_a_network_check_that_gets_no_answer_is_false_within_its_timeout() -> None:
    # TEST-NET-1 (RFC 5737) is never routed: no answer, or an immediate refusal offline
    assert demo_data.network_answers("http://192.0.2.1:9/", timeout=1.0) is False


def test_the_script_prints_the_reason_first_and_unpacks_the_copy_once(tmp_path) -> None:
    image = io.BytesIO()
    Image.new("RGB", (32, 32)).save(image, format="JPEG")
    tarball = tmp_path / "copy.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("train/cat/0.jpg")
        info.size = len(image.getvalue())
        tar.addfile(info, io.BytesIO(image.getvalue()))
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "demo_data.py"), str(tarball), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stderr.splitlines()[0].startswith("demo data: the real CIFAR-10 training split")
    assert run.stdout.split() == ["data.name=imagefolder", f"data.root={tmp_path / 'cifar10-jpeg'}"]
    assert (tmp_path / "cifar10-jpeg" / "train" / "cat" / "0.jpg").is_file()
