"""`prunetune`: the command line. This package assembles the parser and turns errors into one
readable line; each command's options sit next to what it does:

- search/cli/model.py: prune, pretrain, replay (one model; only `pruning`, no Ray or MLflow)
- search/cli/searching.py: search, pareto, export, report (a search's trials, Ray and MLflow)
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from search.cli import model, searching
from search.cli.options import RAW, IntermixedParser

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunetune",
        description="Search, apply and replay pruning schedules for CNNs (VGG19, ResNet-56,\n"
        "MobileNetV2, torchvision models, your own): find the cheapest prune -> fine-tune\n"
        "schedule that reaches a MACs speed-up without losing accuracy (Ray Tune + Optuna,\n"
        "tracked in MLflow).",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser
    )
    model.add_parsers(sub)
    searching.add_parsers(sub)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result: Any = args.handler(args)
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
