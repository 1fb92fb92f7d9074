"""`prunetune`: the command line. Parsing only; search/commands.py and search/search_commands.py
do the work."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search import commands

SEARCH_COMMANDS = ("search", "pareto", "export", "report")
RAW = argparse.RawDescriptionHelpFormatter  # keeps our line breaks and example lines intact

EPILOG = """examples:
  prunetune search experiments/demo_search.yaml num_trials=4
  prunetune pareto experiments/demo_search.yaml
  prunetune export experiments/demo_search.yaml --pick knee --out runs/demo/export
  prunetune report experiments/demo_search.yaml
  prunetune prune --speedup 8.84 --width 0.25 --num-classes 10
  prunetune pretrain experiments/demo.yaml epochs=3
  prunetune replay experiments/demo_schedule.yaml --checkpoint runs/demo/baseline/baseline.pt

`prunetune COMMAND --help` explains each command.
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


def _command(sub: Any, name: str, summary: str, description: str, *examples: str) -> Any:
    return sub.add_parser(
        name,
        help=summary,
        description=description.strip(),
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=RAW,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunetune",
        description="Search, apply and replay pruning schedules for CIFAR VGG19: find the\n"
        "cheapest prune -> fine-tune schedule that reaches a MACs speed-up without losing\n"
        "accuracy (Ray Tune + Optuna, tracked in MLflow).",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prune(sub)
    _add_pretrain(sub)
    _add_replay(sub)
    _add_search(sub)
    _add_readers(sub)
    return parser


def _add_prune(sub: Any) -> None:
    p = _command(
        sub,
        "prune",
        "prune a VGG19 to an exact MACs speed-up and print the report",
        """
Prune a VGG19 (random-init or from a checkpoint) to an exact MACs speed-up and
print per-layer widths before and after, MACs, params and the time taken. With
--data, also print validation accuracy before and right after pruning.
""",
        "prunetune prune --speedup 8.84 --width 0.25 --num-classes 10",
        "prunetune prune --speedup 8.84 --checkpoint baseline.pt --data cifar100:~/data --json",
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
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    _add_data_args(p)


def _add_pretrain(sub: Any) -> None:
    p = _command(
        sub,
        "pretrain",
        "train the unpruned baseline from a YAML config",
        """
Train the unpruned VGG19 baseline (best epoch chosen on validation) and write
baseline.pt and metrics.json to the config's `out` folder. Shows a progress bar
per epoch.
""",
        "prunetune pretrain experiments/demo.yaml",
        "prunetune pretrain experiments/demo.yaml epochs=2 data.train_subset=2000",
    )
    p.add_argument("config", type=Path, help="pretrain config YAML")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. epochs=5 data.name=cifar10"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def _add_replay(sub: Any) -> None:
    p = _command(
        sub,
        "replay",
        "run a schedule file stage by stage",
        """
Run a schedule file in-process: per stage, prune, evaluate, fine-tune, evaluate,
with a progress bar per fine-tune. Writes pruned.pt, schedule.yaml and
metrics.json to --out after every stage. On the seed, data and thread count of
an exported trial it reproduces that trial's accuracy.
""",
        "prunetune replay runs/demo/export/schedule.yaml",
        "prunetune replay experiments/demo_schedule.yaml --checkpoint baseline.pt "
        "--data imagefolder:~/cifar10-jpeg",
    )
    p.add_argument("schedule", type=Path, help="schedule file (YAML or JSON)")
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
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    _add_data_args(p)


def _add_search(sub: Any) -> None:
    p = _command(
        sub,
        "search",
        "search pruning schedules with Ray Tune, tracked in MLflow",
        """
Search pruning schedules described by an experiment YAML: each trial applies
one schedule to the baseline and reports per stage; Optuna proposes the next
(accuracy up, fine-tune epochs down). Without --address a local Ray cluster
starts; without --mlflow-uri MLflow uses sqlite in the experiment's out folder.
Prints one line per trial event (finished/running/failed and the best so far),
then the Pareto front; logs the front, its plots and report.html to the
search's parent run.
""",
        "prunetune search experiments/demo_search.yaml --dry-run",
        "prunetune search experiments/demo_search.yaml num_trials=6 max_concurrent=2",
        "prunetune search experiments/vgg19_cifar100.yaml --address auto "
        "--mlflow-uri http://127.0.0.1:5000",
    )
    p.add_argument("config", type=Path, help="experiment YAML")
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


WHICH = """

EXPERIMENT is the experiment YAML (with the KEY=VALUE overrides the search ran
with), or an MLflow experiment name together with --mlflow-uri. The latest
search of the experiment is read."""


def _add_readers(sub: Any) -> None:
    pareto = _command(
        sub,
        "pareto",
        "print the Pareto front of a search and tag it in MLflow",
        "Read a search's trials back from MLflow, print the front of validation\n"
        "accuracy (max) against fine-tune epochs (min) and tag its runs pareto=true.\n"
        "Failed or early-stopped trials never count." + WHICH,
        "prunetune pareto experiments/demo_search.yaml",
        "prunetune pareto vgg19-cifar100-8x --mlflow-uri http://127.0.0.1:5000 --json",
    )
    export = _command(
        sub,
        "export",
        "export one trial's schedule, weights, plots and report",
        "Write the chosen trial's schedule.yaml, pruned.pt, widths.json, metrics.json,\n"
        "report.md, its plots (pareto.png, widths.png, accuracy.png,\n"
        "accuracy_front.png) and the search's report.html to --out." + WHICH,
        "prunetune export experiments/demo_search.yaml --pick knee --out runs/demo/export",
        "prunetune export experiments/demo_search.yaml --pick max-acc-under-cost=3 --out best/",
    )
    report = _command(
        sub,
        "report",
        "write a search's report as one self-contained HTML file",
        "Write one HTML file (plots embedded, nothing fetched from elsewhere) with the\n"
        "config, the search space, the Pareto table, the plots, the chosen schedule\n"
        "file and links to the MLflow runs, and print its path." + WHICH,
        "prunetune report experiments/demo_search.yaml",
        "prunetune report demo --mlflow-uri sqlite:///runs/demo/mlflow.db --out /tmp/demo",
    )
    for p in (pareto, export, report):
        p.add_argument("experiment", help="experiment YAML, or MLflow experiment name")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="the same overrides the search was run with, e.g. out=runs/x",
        )
        p.add_argument("--mlflow-uri", help="tracking URI (default: the config's)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
    for p in (export, report):
        p.add_argument(
            "--pick",
            default="knee",
            help="the trial to export or show: max-acc, knee (default) or "
            "max-acc-under-cost=EPOCHS",
        )
    export.add_argument("--out", type=Path, required=True, help="folder to write")
    report.add_argument(
        "--out", type=Path, help="folder for report.html (default: the search's out folder)"
    )


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
    # user mistakes (and OS refusals such as a read-only --out) as one paragraph, no traceback
    except (ValueError, OSError, FloatingPointError, RuntimeError) as err:
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
