"""`prunetune`: prune, pretrain and replay (search, pareto and export come with the search)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search import commands

SEARCH_COMMANDS = ("search", "pareto", "export")

EPILOG = """examples:
  prunetune search experiments/demo_search.yaml num_trials=4
  prunetune pareto experiments/demo_search.yaml
  prunetune export experiments/demo_search.yaml --pick knee --out runs/demo/export
  prunetune prune --speedup 8.84 --width 0.25 --num-classes 10
  prunetune pretrain experiments/demo.yaml epochs=3
  prunetune replay experiments/demo_schedule.yaml --checkpoint runs/demo/baseline/baseline.pt
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="NAME[:ROOT]",
        help="dataset: cifar100, cifar10, imagefolder:ROOT or synthetic "
        "(e.g. cifar10:~/data, imagefolder:~/cifar10-jpeg)",
    )
    p.add_argument("--train-subset", type=int, metavar="N", help="stratified N training images")
    p.add_argument(
        "--val-size",
        type=float,
        metavar="F",
        help="validation carved from train: a fraction (0.1) or a count (5000)",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunetune",
        description="Search, apply and replay pruning schedules for CIFAR VGG19.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prune",
        help="prune a VGG19 to an exact MACs speed-up and print the report",
        description="Prune a VGG19 (random-init or from a checkpoint) to an exact "
        "MACs speed-up. With --data, also print validation accuracy "
        "before and right after pruning.",
        epilog="example: prunetune prune --speedup 8.84 --checkpoint baseline.pt "
        "--data cifar100:~/data --json",
    )
    p.add_argument("--speedup", type=float, required=True, help="MACs ratio to land on, e.g. 8.84")
    p.add_argument("--width", type=float, help="channel multiplier of a random-init model (1.0)")
    p.add_argument("--num-classes", type=int, help="classes of a random-init model (100)")
    p.add_argument("--checkpoint", type=Path, help="state dict of an (unpruned) VGG19")
    p.add_argument(
        "--importance", default="group_norm", help="group_norm (default), lamp, bn_scale or random"
    )
    p.add_argument("--ranking", default="global", choices=("global", "local"))
    p.add_argument("--min-channels", type=int, default=4, help="per-layer floor (default 4)")
    p.add_argument(
        "--min-channel-ratio",
        type=float,
        default=0.1,
        help="per-layer floor as a fraction of the layer's channels (default 0.1)",
    )
    p.add_argument("--out", type=Path, help="also write the pruned state dict here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto")
    _add_data_args(p)

    p = sub.add_parser(
        "pretrain",
        help="train the unpruned baseline from a YAML config",
        description="Train the baseline VGG19 and write baseline.pt and "
        "metrics.json to the config's `out` folder.",
        epilog="example: prunetune pretrain experiments/demo.yaml epochs=2 data.train_subset=2000",
    )
    p.add_argument("config", type=Path)
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. epochs=5 data.name=cifar10"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    p = sub.add_parser(
        "replay",
        help="run a schedule file stage by stage",
        description="Run a schedule in-process: per stage, prune, evaluate, "
        "fine-tune, evaluate. Writes pruned.pt, schedule.yaml and "
        "metrics.json to --out after every stage.",
        epilog="example: prunetune replay export/schedule.yaml --checkpoint "
        "baseline.pt --data imagefolder:~/cifar10-jpeg",
    )
    p.add_argument("schedule", type=Path)
    p.add_argument(
        "--checkpoint", type=Path, help="baseline state dict (default: the file's run.checkpoint)"
    )
    p.add_argument("--width", type=float, help="width of a random-init model when no checkpoint")
    p.add_argument("--seed", type=int, help="default: the file's run.seed, else 0")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: the file's run.threads)"
    )
    p.add_argument("--out", type=Path, help="output folder (default runs/replay/<schedule name>)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("--device", default="auto")
    _add_data_args(p)
    _add_search_commands(sub)
    return parser


def _add_search_commands(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search pruning schedules with Ray Tune, tracked in MLflow",
        description="Run a distributed search over pruning schedules described by "
        "an experiment YAML. Without an address a local Ray cluster "
        "starts; without a tracking URI MLflow uses sqlite under the "
        "experiment's output folder.",
        epilog="example: prunetune search experiments/demo_search.yaml "
        "num_trials=6 --mlflow-uri http://127.0.0.1:5000",
    )
    p.add_argument("config", type=Path)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. num_trials=4")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite in the out folder)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and search space, then exit",
    )
    p.add_argument("--json", action="store_true", help="print the front as JSON at the end")

    for name, text in (
        ("pareto", "print the Pareto front of a search and tag it in MLflow"),
        ("export", "export one trial's schedule and weights for replay"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text + ". EXPERIMENT is the experiment "
            "YAML, or an MLflow experiment name together with --mlflow-uri.",
            epilog=f"example: prunetune {name} experiments/demo_search.yaml"
            + (" --pick knee --out runs/demo/export" if name == "export" else " --json"),
        )
        p.add_argument("experiment")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="the same overrides the search was run with, e.g. out=runs/x",
        )
        p.add_argument("--mlflow-uri", help="tracking URI (default: the config's)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "export":
            p.add_argument(
                "--pick",
                default="knee",
                help="max-acc, knee (default) or max-acc-under-cost=EPOCHS",
            )
            p.add_argument("--out", type=Path, required=True, help="folder to write")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in SEARCH_COMMANDS:  # Ray/MLflow imports cost seconds: only when needed
            from search import search_commands as module
        else:
            module = commands
        result: Any = getattr(module, args.command)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"prunetune {args.command}: error: {err}", file=sys.stderr)
        if not args.debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
