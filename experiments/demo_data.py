"""`make demo`'s data, chosen in this order, and the first line saying which and why:

1. the shared copy of the real CIFAR-10 training JPEGs, when the tarball is there (unpacked once
   into the cache);
2. else real CIFAR-10 through torchvision's download (or a copy it downloaded before), when the
   download server answers within a few seconds;
3. else generated images, said loudly.

    python experiments/demo_data.py TARBALL CACHE   # prints the KEY=VALUE overrides, one a line
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # torchvision's source
TIMEOUT_S = 5.0  # a network that has not answered by then would make the demo crawl anyway


@dataclass(frozen=True)
class DemoData:
    overrides: tuple[str, ...]  # KEY=VALUE for `prunetune search` and `export`
    reason: str  # which data, and why: the demo's first line
    unpack: Path | None = None  # the JPEG tarball, when it still has to be unpacked


def network_answers(url: str = CIFAR10_URL, timeout: float = TIMEOUT_S) -> bool:
    """Whether the CIFAR-10 download server answers a HEAD request within `timeout` seconds."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except OSError:  # URLError, timeouts, refused connections, HTTP errors
        return False


def choose(tarball: Path, cache: Path, online: Callable[[], bool] = network_answers) -> DemoData:
    if tarball.is_file():
        root = cache / "cifar10-jpeg"
        return DemoData(
            ("data.name=imagefolder", f"data.root={root}"),
            f"demo data: the real CIFAR-10 training split (the shared JPEG copy {tarball}, "
            f"unpacked in {root})",
            None if (root / "train").is_dir() else tarball,
        )
    root = cache / "cifar10"
    real = ("data.name=cifar10", f"data.root={root}")
    if (root / "cifar-10-batches-py").is_dir():
        return DemoData(
            real,
            f"demo data: real CIFAR-10, downloaded earlier to {root} (no JPEG copy at {tarball})",
        )
    if online():
        return DemoData(
            (*real, "data.download=true"),
            f"demo data: real CIFAR-10 through torchvision's download to {root} (no JPEG copy "
            f"at {tarball}; {CIFAR10_URL} answered)",
        )
    return DemoData(
        ("data.name=synthetic",),
        f"demo data: GENERATED images, not real ones: no JPEG copy at {tarball} and "
        f"{CIFAR10_URL} did not answer within {TIMEOUT_S:g} s (pass "
        "SHARED_CIFAR10=/path/to/cifar10-train-jpeg.tar.gz, or run where the network answers)",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tarball", type=Path)
    p.add_argument("cache", type=Path)
    args = p.parse_args(argv)
    data = choose(args.tarball, args.cache)
    print(data.reason, file=sys.stderr, flush=True)
    if data.unpack:
        root = args.cache / "cifar10-jpeg"
        print(f"unpacking the JPEGs to {root} (once)", file=sys.stderr, flush=True)
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(data.unpack) as tar:
            tar.extractall(root, filter="data")
    print("\n".join(data.overrides))


if __name__ == "__main__":
    main()
