"""The search-side subcommands: search, pareto, export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from search.config import ExperimentConfig, MlflowConfig, config_to_dict, load_config
from search.pareto import parse_pick
from search.progress import say
from search.results import (
    export as export_trial,
)
from search.results import (
    format_front,
    front,
    front_json,
    load_rows,
    pick,
    plot_front,
    tag_front,
)
from search.space import describe_space
from trainables import tracking


def _config(args: argparse.Namespace) -> ExperimentConfig:
    config = load_config(args.config, args.overrides)
    if args.address:
        config = dataclasses.replace(config, ray_address=args.address)
    if args.mlflow_uri:
        config = dataclasses.replace(
            config, mlflow=dataclasses.replace(config.mlflow, tracking_uri=args.mlflow_uri)
        )
    return config


def search(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args)
    if args.dry_run:
        print(
            yaml.safe_dump(
                {
                    "config": config_to_dict(config),
                    "search_space": describe_space(config.space),
                    "tracking_uri": config.tracking_uri,
                    "storage": str(config.storage),
                },
                sort_keys=False,
            )
        )
        return {}
    from search.tuner import run_search  # Ray is only imported when a search really runs

    outcome = run_search(config, resume=args.resume)
    reference = [r["trial_id"] for r in outcome.results if r["reference"]]
    summary = finish_search(config, outcome.parent_run_id, reference)
    failed = sum(1 for r in outcome.results if r["error"])
    say(
        f"{len(outcome.results)} trials, {failed} failed; MLflow UI: "
        f"{tracking.ui_command(config.tracking_uri)}"
    )
    return summary | {"parent_run_id": outcome.parent_run_id, "failed": failed}


def finish_search(
    config: ExperimentConfig, parent_id: str, reference_ids: list[str] = ()
) -> dict[str, Any]:  # type: ignore[assignment]
    """Front from MLflow's completed runs: tag it, log table and plot to the parent, print it."""
    uri = config.tracking_uri
    rows = load_rows(uri, config.experiment_name, parent_id)
    for row in rows:
        if row.trial_id in reference_ids:
            tracking.set_tags(uri, row.run_id, {"reference": "true"})
    rows = load_rows(uri, config.experiment_name, parent_id)
    on_front = front(rows)
    tag_front(uri, rows, on_front)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pareto.json").write_text(json.dumps(front_json(on_front), indent=2))
        (folder / "pareto.txt").write_text(format_front(rows, on_front) + "\n")
        plot_front(rows, on_front, folder / "pareto.png")
        tracking.log_artifacts(uri, parent_id, folder)
    tracking.finish_run(uri, parent_id)
    say(format_front(rows, on_front))
    return {"front": front_json(on_front), "trials": len(rows)}


def _where(args: argparse.Namespace) -> tuple[str, str]:
    """EXPERIMENT is a config file (its MLflow settings) or an experiment name."""
    if Path(args.experiment).is_file():
        config = load_config(args.experiment, args.overrides)
        if args.mlflow_uri:
            config = dataclasses.replace(
                config, mlflow=MlflowConfig(args.mlflow_uri, config.mlflow.experiment)
            )
        return config.tracking_uri, config.experiment_name
    if not args.mlflow_uri:
        raise ValueError(
            f"{args.experiment} is not a config file; to name an MLflow experiment "
            "instead, also pass --mlflow-uri"
        )
    return args.mlflow_uri, args.experiment


def pareto(args: argparse.Namespace) -> dict[str, Any]:
    uri, experiment = _where(args)
    rows = load_rows(uri, experiment)
    on_front = front(rows)
    tag_front(uri, rows, on_front)
    if not args.json:
        print(format_front(rows, on_front))
    return {"front": front_json(on_front), "trials": len(rows)}


def export(args: argparse.Namespace) -> dict[str, Any]:
    how = parse_pick(args.pick)
    uri, experiment = _where(args)
    row = pick(load_rows(uri, experiment), how)
    out = args.out.expanduser().resolve()
    metrics = export_trial(uri, row, out, args.pick)
    say(
        f"exported trial {row.trial_id} ({row.val_acc:.2%}, {row.cost:g} epochs) to {out}; "
        f"replay it with: prunetune replay {out / 'schedule.yaml'}"
    )
    return metrics | {"out": str(out)}
