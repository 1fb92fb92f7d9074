"""What several commands share: the subcommand skeleton, the data options, --latency and
--onnx (each declared once, with the words that differ per command passed in)."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pruning.data import DATASETS, DataSpec, parse_val_size
from pruning.latency import BATCHES
from pruning.onnx_export import CHECK_IMAGES, INSTALL_HINT, ONNX_FILE, OnnxExport, failed_path
from search.progress import say

RAW = argparse.RawDescriptionHelpFormatter  # keeps our line breaks and example lines intact


def command(sub: Any, name: str, summary: str, description: str, *examples: str) -> Any:
    return sub.add_parser(
        name,
        help=summary,
        description=description.strip(),
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=RAW,
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="NAME[:ROOT]",
        help=f"dataset: one of {', '.join(DATASETS.names())}, with :ROOT for its folder "
        "(e.g. cifar10:~/data, imagefolder:~/cifar10-jpeg)",
    )
    p.add_argument("--train-subset", type=int, metavar="N", help="stratified N training images")
    p.add_argument(
        "--val-size",
        type=parse_val_size,
        metavar="F|N",
        help="validation carved from train: a fraction below 1 (0.1) or a count (5000)",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR")


def add_latency_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--latency/--no-latency (default on): time `what` (e.g. "the dense and pruned model") at
    pruning.latency's batch sizes on --device."""
    batches = " and ".join(str(b) for b in BATCHES)
    p.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"time {what} at batch {batches} on --device (default on; --no-latency skips it, "
        "e.g. for big models)",
    )


def add_onnx_arg(p: argparse.ArgumentParser, where: str, images: str) -> None:
    """--onnx: a verified ONNX file `where` (e.g. "beside --out"), checked on `images`."""
    p.add_argument(
        "--onnx",
        action="store_true",
        help=f"also write {ONNX_FILE} {where} (dynamic batch, normalisation in its metadata), "
        f"verify it with onnxruntime against torch (logits and top-1 on {CHECK_IMAGES} {images}; "
        f"a failure is an error and the file is kept as {failed_path(Path(ONNX_FILE)).name}) "
        f"and time both; "
        f"needs {INSTALL_HINT}",
    )


def say_onnx(result: OnnxExport) -> dict[str, Any]:
    """Says how a verified ONNX file checked out and timed; its entry of a command's --json."""
    if result.note:
        say(f"warning: {result.note}")
    say(f"{result.path}: {result.verification.describe()}")
    for pair in result.latency.values():
        say(f"latency {pair.describe()}")
    return {"onnx": result.to_dict()}


def data_spec(args: argparse.Namespace, base: DataSpec | None = None) -> DataSpec | None:
    """--data NAME[:ROOT] and friends on top of `base` (a file's data section)."""
    if args.data is None and base is None:
        return None
    spec = base or DataSpec()
    if args.data is not None:
        name, _, root = args.data.partition(":")
        spec = replace(spec, name=name, root=root or None)  # as given: `~` stays `~`
    changes: dict[str, Any] = {}
    if args.train_subset is not None:
        changes["train_subset"] = args.train_subset
    if args.val_size is not None:
        changes["val_size"] = args.val_size
    if args.download:
        changes["download"] = True
    return replace(spec, **changes)


class IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes positionals among the options (argparse's intermixed
    parsing), so KEY=VALUE overrides may follow an option: `search CFG --resume epochs=3`."""

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._intermixing:  # the two passes of parse_known_intermixed_args itself
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def out_folder(path: Path, option: str) -> Path:
    """`path` made absolute and checked to be a folder, or one that can be made (no file in its
    way); nothing is created yet, so a command that fails later leaves no folder behind."""
    folder = path.expanduser().resolve()
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = f"{option} {folder}" + ("" if part == folder else f": {part}")
                raise ValueError(f"{where} is a file, not a folder; pass a folder to write into")
            break
    return folder


@contextmanager
def writing_into(folder: Path) -> Iterator[Path]:
    """Makes `folder` for the block that writes into it. When the block fails, the folders it
    made are removed again (a folder that was there before is left as it was)."""
    new = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if new:
            shutil.rmtree(new[-1], ignore_errors=True)  # the outermost folder made here
        raise
