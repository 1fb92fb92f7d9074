"""The search-side subcommands: search, pareto, export, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from search.config import ExperimentConfig, MlflowConfig, config_to_dict, load_config
from search.pareto import Pick, parse_pick
from search.progress import say
from search.ray_storage import rows_with_ray_fallback
from search.readback import report_data
from search.report import build_html
from search.results import (
    TrialRow,
    format_front,
    front,
    front_json,
    load_rows,
    pick,
    tag_front,
)
from search.results import (
    export as export_trial,
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
    """Front from MLflow's completed runs: tag it, log table, plots and report to the parent,
    print it. The plots show the knee, the default export pick."""
    uri = config.tracking_uri
    rows, from_mlflow = rows_with_ray_fallback(config)  # copies trials MLflow missed
    if not from_mlflow:
        say(
            "the trials' results are kept in Ray's storage; once the tracking server is back, "
            "`prunetune pareto` with this config copies them into MLflow"
        )
        say(format_front(rows, front(rows)))
        return {"front": front_json(front(rows)), "trials": len(rows), "mlflow": False}
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
        _plots_and_report(uri, config.experiment_name, parent_id, folder)
        tracking.log_artifacts(uri, parent_id, folder)
    tracking.finish_run(uri, parent_id)
    say(format_front(rows, on_front))
    return {"front": front_json(on_front), "trials": len(rows)}


def _plots_and_report(uri: str, experiment: str, parent_id: str, folder: Path) -> None:
    """The plots (the knee as the pick) and report.html. Best effort: a search that ran for hours
    still ends, with its front logged, when a picture cannot be made."""
    try:
        data = report_data(uri, experiment, Pick("knee"), "knee", folder, parent_id)
        (folder / "report.html").write_text(build_html(data))
    except Exception as err:
        say(f"warning: no plots or report.html for this search ({err}); try `prunetune report`")


def _where(args: argparse.Namespace) -> tuple[str, str, Path]:
    """EXPERIMENT is a config file (its MLflow settings) or an experiment name; also the folder
    the search wrote to (runs/<experiment> for a name)."""
    if Path(args.experiment).is_file():
        config = load_config(args.experiment, args.overrides)
        if args.mlflow_uri:
            config = dataclasses.replace(
                config, mlflow=MlflowConfig(args.mlflow_uri, config.mlflow.experiment)
            )
        where = config.tracking_uri, config.experiment_name, config.out_dir
    elif not args.mlflow_uri:
        raise ValueError(
            f"{args.experiment} is not a config file; to name an MLflow experiment "
            "instead, also pass --mlflow-uri"
        )
    else:
        where = args.mlflow_uri, args.experiment, Path("runs", args.experiment).resolve()
    _check_store(where[0])
    return where


def _check_store(uri: str) -> None:
    """A sqlite store that is not there means the wrong overrides or URI: say so rather than
    let MLflow create an empty database."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ValueError(
                f"there is no MLflow database at {path}: no search has written there. Pass "
                "the same KEY=VALUE overrides (out=...) the search ran with, or --mlflow-uri "
                "with the search's tracking URI"
            )


def _ray_rows(args: argparse.Namespace) -> list[TrialRow] | None:
    """With a config file: trials only Ray's storage has are copied into MLflow first. Returns
    the rows from Ray's storage when MLflow cannot be reached, else None."""
    if not Path(args.experiment).is_file():
        return None
    config = load_config(args.experiment, args.overrides)
    if args.mlflow_uri:
        config = dataclasses.replace(
            config, mlflow=MlflowConfig(args.mlflow_uri, config.mlflow.experiment)
        )
    _check_store(config.tracking_uri)
    rows, from_mlflow = rows_with_ray_fallback(config)
    return None if from_mlflow else rows


def pareto(args: argparse.Namespace) -> dict[str, Any]:
    ray_rows = _ray_rows(args)
    if ray_rows is not None:
        on_front = front(ray_rows)
        if not args.json:
            print(format_front(ray_rows, on_front))
        return {"front": front_json(on_front), "trials": len(ray_rows), "source": "ray"}
    uri, experiment, _ = _where(args)
    rows = load_rows(uri, experiment)
    on_front = front(rows)
    tag_front(uri, rows, on_front)
    if not args.json:
        print(format_front(rows, on_front))
    return {"front": front_json(on_front), "trials": len(rows)}


def export(args: argparse.Namespace) -> dict[str, Any]:
    """The pick's files, its plots and the search's report.html into --out."""
    how = parse_pick(args.pick)
    ray_rows = _ray_rows(args)
    out = _folder(args.out)
    if ray_rows is not None:  # MLflow unreachable: the trial's files from its Ray checkpoint
        row = pick(ray_rows, how)
        metrics = export_trial("", row, out, args.pick)
        say(
            f"exported trial {row.trial_id} from Ray's storage to {out} (no report.html: it "
            "needs MLflow)"
        )
        return metrics | {"out": str(out)}
    uri, experiment, _ = _where(args)
    pick(load_rows(uri, experiment), how)  # nothing completed: the error, before any work
    data = report_data(uri, experiment, how, args.pick, out)
    row = data.pick
    assert row is not None
    metrics = export_trial(uri, row, out, args.pick)
    (out / "report.html").write_text(build_html(data))
    say(
        f"exported trial {row.trial_id} ({row.val_acc:.2%}, {row.cost:g} epochs) to {out} "
        f"with its plots and report.html; replay it with: "
        f"prunetune replay {out / 'schedule.yaml'}"
    )
    return metrics | {"out": str(out)}


def report(args: argparse.Namespace) -> dict[str, Any]:
    how = parse_pick(args.pick)
    uri, experiment, out_dir = _where(args)  # first: a wrong out= must not create a database
    if _ray_rows(args) is not None:
        raise RuntimeError(
            "the report reads its plots' data from MLflow, which is unreachable; start the "
            "tracking server (`prunetune pareto` shows the front from Ray's storage meanwhile)"
        )
    out = _folder(args.out or out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        data = report_data(uri, experiment, how, args.pick, Path(tmp))
    path = out / "report.html"
    path.write_text(build_html(data))
    say(f"wrote {path} ({len(data.rows)} trials, {len(data.front_ids)} on the front)")
    if not args.json:
        print(path)
    return {"report": str(path), "trials": len(data.rows), "front": sorted(data.front_ids)}


def _folder(path: Path) -> Path:
    folder = path.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder; pass a folder to write into")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
