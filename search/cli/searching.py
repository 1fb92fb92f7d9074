"""search, pareto, export and report: commands on a search and its trials (Ray Tune, MLflow).
Each command's options sit right above what it does; the work itself is in search/tuner.py,
search/trials.py, search/pareto.py, search/export.py and search/report/."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pruning.compute import CostObjective
from pruning.data import check_root
from pruning.onnx_export import ONNX_FILE, require_onnx
from search.cli.options import add_onnx_arg, command, out_folder, say_onnx, writing_into
from search.config import ExperimentConfig, MlflowConfig, config_to_dict, load_config
from search.objectives import Objective
from search.pareto import Pick, format_front, front, front_json, parse_pick, pick
from search.progress import say
from search.rungs import describe as describe_early_stopping
from search.space import describe_space
from search.strategies import describe as describe_strategy
from trainables.mlflow_models import check_name

if TYPE_CHECKING:
    from search.trials import TrialRow

# What reads or writes a search (search.tuner: Ray; search.trials, search.export, search.report,
# trainables.tracking: MLflow, matplotlib) is imported by the command that does it, not here:
# `--help`, `search --dry-run` and a config's errors answer without those seconds of imports.


def add_parsers(sub: Any) -> None:
    _add_search(sub)
    _add_pareto(sub)
    _add_export(sub)
    _add_report(sub)


def _add_search(sub: Any) -> None:
    p = command(
        sub,
        "search",
        "search pruning schedules with Ray Tune, tracked in MLflow",
        """
Search pruning schedules described by an experiment YAML: each trial applies
one schedule to the baseline and reports per stage; Optuna proposes the next
(accuracy up, cost down: the config's `cost`, fine-tune compute in TMACs by
default, or epochs). Without --address a local Ray cluster
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
        "--force",
        action="store_true",
        help="with --resume: continue even though the config differs from the stored one",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and search space, then exit",
    )
    p.add_argument("--json", action="store_true", help="print the front as JSON at the end")
    p.set_defaults(handler=search)


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
        return _dry_run(config)
    # before out/ and mlflow.db are created; on a cluster the data may live on the nodes only
    if not config.ray_address:
        check_root(config.data)
    out_folder(config.out_dir, "out")
    # Ray is only imported when a search really runs
    from search.accounting import describe_spent
    from search.tuner import failure_summary, run_search, search_session
    from trainables import tracking

    with search_session(config, args.resume, args.force):
        outcome = run_search(config, resume=args.resume)
        all_failed = failure_summary(outcome.results)
        if all_failed:  # no front to read: the search failed, say why
            tracking.finish_run(config.tracking_uri, outcome.parent_run_id, "FAILED")
            raise RuntimeError(f"{all_failed}. `prunetune pareto` lists each trial's error")
        reference = [r["trial_id"] for r in outcome.results if r["reference"]]
        _what_mattered(config, outcome.parent_run_id, outcome.results)  # before the report
        summary = finish_search(config, outcome.parent_run_id, reference)
    failed = sum(1 for r in outcome.results if r["error"])
    stopped = sum(1 for r in outcome.results if not (r["error"] or r["metrics"].get("completed")))
    unit = config.cost_objective.unit
    say(describe_spent(outcome.spent, outcome.wall_s, unit, stopped, failed))
    say(
        f"{len(outcome.results)} trials, {failed} failed; MLflow UI: "
        f"{tracking.ui_command(config.tracking_uri)}"
    )
    spent = {"search_cost": outcome.spent.cost, "wall_s": round(outcome.wall_s, 1)}
    return summary | {"parent_run_id": outcome.parent_run_id, "failed": failed} | spent


def _what_mattered(config: ExperimentConfig, parent_id: str, results: list[dict[str, Any]]) -> None:
    """The parameters that drove val acc, on the parent run and said. Best effort, as the plots:
    a search that ran for hours still logs its front when this cannot be computed."""
    from search.importance import log_what_mattered

    try:
        lines = log_what_mattered(config, parent_id, results).lines()
    except Exception as err:
        say(f"warning: no parameter importance for this search ({err})")
        return
    say("what mattered for val acc: " + "; ".join(lines))


def _dry_run(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config and the search space on stdout; nothing is run or written."""
    resolved = {
        "model": config.model_spec.describe(),
        "config": config_to_dict(config),
        "search_space": describe_space(config.space),
        "strategy": describe_strategy(config),
        "early_stopping": describe_early_stopping(config.asha),
        "tracking_uri": config.tracking_uri,
        "storage": str(config.storage),
    }
    print(yaml.safe_dump(resolved, sort_keys=False))
    return {}


def finish_search(
    config: ExperimentConfig, parent_id: str, reference_ids: list[str] = ()
) -> dict[str, Any]:  # type: ignore[assignment]
    """Front from MLflow's completed runs: tag it, log table, plots and report to the parent,
    print it. The plots show the knee, the default export pick."""
    from search.trials import load_rows, rows_with_ray_fallback, tag_front
    from trainables import tracking

    uri, cost = config.tracking_uri, config.cost_objective
    rows, from_mlflow = rows_with_ray_fallback(config)  # copies trials MLflow missed
    if not from_mlflow:
        say(
            "the trials' results are kept in Ray's storage; once the tracking server is back, "
            "`prunetune pareto` with this config copies them into MLflow"
        )
        on_front = front(rows, config.ranked_by)  # the config's objectives
        say(format_front(rows, on_front, cost, config.ranked_by))
        return {"front": front_json(on_front), "trials": len(rows), "mlflow": False}
    for row in rows:
        if row.trial_id in reference_ids:
            tracking.set_tags(uri, row.run_id, {"reference": "true"})
    rows = load_rows(uri, config.experiment_name, parent_id, cost)
    on_front = front(rows, config.ranked_by)
    tag_front(uri, rows, on_front)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pareto.json").write_text(json.dumps(front_json(on_front), indent=2))
        table = format_front(rows, on_front, cost, config.ranked_by)
        (folder / "pareto.txt").write_text(table + "\n")
        _plots_and_report(uri, config.experiment_name, parent_id, folder, cost)
        tracking.log_artifacts(uri, parent_id, folder)
    tracking.finish_run(uri, parent_id)
    say(format_front(rows, on_front, cost, config.ranked_by))
    return {"front": front_json(on_front), "trials": len(rows)}


def _plots_and_report(
    uri: str, experiment: str, parent_id: str, folder: Path, cost: CostObjective
) -> None:
    """The plots (the knee as the pick) and report.html. Best effort: a search that ran for hours
    still ends, with its front logged, when a picture cannot be made."""
    from search.report.data import read_report_data
    from search.report.html import build_html

    try:
        data = read_report_data(uri, experiment, Pick("knee"), "knee", folder, parent_id, cost)
        (folder / "report.html").write_text(build_html(data))
    except Exception as err:
        say(f"warning: no plots or report.html for this search ({err}); try `prunetune report`")


WHICH = """

EXPERIMENT is the experiment YAML (with the KEY=VALUE overrides the search ran
with), or an MLflow experiment name together with --mlflow-uri. The latest
search of the experiment is read."""


def _reader(sub: Any, name: str, summary: str, description: str, *examples: str) -> Any:
    """A command that reads a search back: pareto, export, report."""
    p = command(sub, name, summary, description + WHICH, *examples)
    p.add_argument("experiment", help="experiment YAML, or MLflow experiment name")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="the same overrides the search was run with, e.g. out=runs/x",
    )
    p.add_argument("--mlflow-uri", help="tracking URI (default: the config's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _add_pick(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pick",
        default="knee",
        help="the trial to export or show: max-acc, knee (default), max-acc-under-cost=X (X "
        "in the search's cost unit: TMACs for cost: compute, epochs for cost: epochs) or "
        "max-acc-under-latency=X (X in ms per batch at the first of latency.batches)",
    )


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


def _cost(args: argparse.Namespace, uri: str, experiment: str) -> CostObjective:
    """The cost objective to rank by: the config's (`cost`, overridable), or for an experiment
    name the one its latest search chose."""
    from search.trials import search_cost
    from trainables import tracking

    if Path(args.experiment).is_file():
        return load_config(args.experiment, args.overrides).cost_objective
    return search_cost(uri, tracking.latest_parent(uri, experiment))


def _objectives(args: argparse.Namespace, uri: str, experiment: str) -> tuple[Objective, ...]:
    """The objectives to rank by: the config's (`objectives`, overridable), or for an experiment
    name the ones its latest search chose."""
    from search.trials import search_objectives
    from trainables import tracking

    if Path(args.experiment).is_file():
        return load_config(args.experiment, args.overrides).ranked_by
    return search_objectives(uri, tracking.latest_parent(uri, experiment))


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
    from search.trials import rows_with_ray_fallback

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


def _add_pareto(sub: Any) -> None:
    p = _reader(
        sub,
        "pareto",
        "print the Pareto front of a search and tag it in MLflow",
        "Read a search's trials back from MLflow, print the front of validation\n"
        "accuracy (max) against the search's cost (min: fine-tune compute in TMACs,\n"
        "or epochs, as its config's `cost` says) and tag its runs pareto=true.\n"
        "Failed or early-stopped trials never count.",
        "prunetune pareto experiments/demo_search.yaml",
        "prunetune pareto vgg19-cifar100-8x --mlflow-uri http://127.0.0.1:5000 --json",
    )
    p.set_defaults(handler=pareto)


def pareto(args: argparse.Namespace) -> dict[str, Any]:
    from search.trials import load_rows, tag_front

    ray_rows = _ray_rows(args)
    if ray_rows is not None:
        config = load_config(args.experiment, args.overrides)
        on_front = front(ray_rows, config.ranked_by)
        if not args.json:
            print(format_front(ray_rows, on_front, config.cost_objective, config.ranked_by))
        return {"front": front_json(on_front), "trials": len(ray_rows), "source": "ray"}
    uri, experiment, _ = _where(args)
    cost, objectives = _cost(args, uri, experiment), _objectives(args, uri, experiment)
    rows = load_rows(uri, experiment, cost=cost)
    on_front = front(rows, objectives)
    tag_front(uri, rows, on_front)
    if not args.json:
        print(format_front(rows, on_front, cost, objectives))
    return {"front": front_json(on_front), "trials": len(rows)}


def _add_export(sub: Any) -> None:
    p = _reader(
        sub,
        "export",
        "export one trial's schedule, weights, plots and report",
        "Write the chosen trial's schedule.yaml, pruned.pt, widths.json, metrics.json,\n"
        "report.md, its plots (pareto.png, widths.png, accuracy.png,\n"
        "accuracy_front.png) and the search's report.html to --out. With --onnx, also\n"
        "model.onnx, verified with onnxruntime on 256 validation images.",
        "prunetune export experiments/demo_search.yaml --pick knee --out runs/demo/export",
        "prunetune export experiments/demo_search.yaml --out runs/demo/export --onnx",
        "prunetune export experiments/demo_search.yaml --out runs/demo/export --register demo-vgg",
        "prunetune export experiments/demo_search.yaml --pick max-acc-under-cost=1.5 --out best/",
    )
    _add_pick(p)
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    add_onnx_arg(p, "beside the exported files", "val images of the trial's data")
    p.add_argument(
        "--register",
        metavar="NAME",
        help="also register the trial's logged MLflow model as a new version of the registered "
        "model NAME (created if new; a name holding other models is refused), tagged with its "
        "speed-ups, accuracy, schedule and search; prints models:/NAME/<version>",
    )
    p.set_defaults(handler=export)


def export(args: argparse.Namespace) -> dict[str, Any]:
    """The pick's files, its plots and the search's report.html into --out."""
    from search.export import export_trial
    from search.report.data import read_report_data
    from search.report.html import build_html
    from search.trials import load_rows

    how = parse_pick(args.pick)
    if args.onnx:  # a missing extra is said before anything is read or written
        require_onnx("prunetune export --onnx")
    if args.register is not None:
        check_name(args.register)
    ray_rows = _ray_rows(args)
    out = out_folder(args.out, "--out")  # checked now, made once the pick is known
    if ray_rows is not None:  # MLflow unreachable: the trial's files from its Ray checkpoint
        row = pick(ray_rows, how, load_config(args.experiment, args.overrides).ranked_by)
        with writing_into(out):
            metrics = export_trial("", row, out, args.pick)
        say(
            f"exported trial {row.trial_id} from Ray's storage to {out} (no report.html: it "
            "needs MLflow)"
        )
        done = metrics | {"out": str(out)} | _onnx(args, out, row)
        return done | _register(args, _where(args)[0], row, out, metrics)
    uri, experiment, _ = _where(args)
    cost, objectives = _cost(args, uri, experiment), _objectives(args, uri, experiment)
    # nothing completed, or a limit no trial meets: the error, first
    pick(load_rows(uri, experiment, cost=cost), how, objectives)
    with writing_into(out):
        data = read_report_data(
            uri, experiment, how, args.pick, out, cost=cost, objectives=objectives
        )
        row = data.pick
        assert row is not None
        metrics = export_trial(uri, row, out, args.pick)
        (out / "report.html").write_text(build_html(data))
    say(
        f"exported trial {row.trial_id} ({row.val_acc:.2%}, {cost.format(row.cost)}) to {out} "
        f"with its plots and report.html; replay it with: "
        f"prunetune replay {out / 'schedule.yaml'}"
    )
    done = metrics | {"out": str(out)} | _onnx(args, out, row)
    return done | _register(args, uri, row, out, metrics)


def _register(
    args: argparse.Namespace, uri: str, row: TrialRow, out: Path, metrics: dict[str, Any]
) -> dict[str, Any]:
    """With --register: the trial's model as a new version in MLflow's Model Registry, after
    every file is written (an unreachable server or an incompatible name fails only this)."""
    from search.export import register

    if args.register is None:
        return {}
    registered = register(uri, args.register, row, out, metrics)
    say(
        f"registered trial {row.trial_id} as version {registered.version} of "
        f"{registered.name}: {registered.uri}"
    )
    if not args.json:
        print(registered.uri)
    return {"registered": dataclasses.asdict(registered) | {"uri": registered.uri}}


def _onnx(args: argparse.Namespace, out: Path, row: TrialRow) -> dict[str, Any]:
    """With --onnx: the verified model.onnx, after the other files (which a failed verification
    leaves in place)."""
    from search.export import export_onnx

    if not args.onnx:
        return {}
    say(f"writing {out / ONNX_FILE} and verifying it with onnxruntime")
    return say_onnx(export_onnx(out, row.speedup))


def _add_report(sub: Any) -> None:
    p = _reader(
        sub,
        "report",
        "write a search's report as one self-contained HTML file",
        "Write one HTML file (plots embedded, nothing fetched from elsewhere) with the\n"
        "config, the search space, the Pareto table, the plots, the chosen schedule\n"
        "file and links to the MLflow runs, and print its path.",
        "prunetune report experiments/demo_search.yaml",
        "prunetune report demo --mlflow-uri sqlite:///runs/demo/mlflow.db --out /tmp/demo",
    )
    _add_pick(p)
    p.add_argument(
        "--out", type=Path, help="folder for report.html (default: the search's out folder)"
    )
    p.set_defaults(handler=report)


def report(args: argparse.Namespace) -> dict[str, Any]:
    from search.report.data import read_report_data
    from search.report.html import build_html

    how = parse_pick(args.pick)
    uri, experiment, out_dir = _where(args)  # first: a wrong out= must not create a database
    if _ray_rows(args) is not None:
        raise RuntimeError(
            "the report reads its plots' data from MLflow, which is unreachable; start the "
            "tracking server (`prunetune pareto` shows the front from Ray's storage meanwhile)"
        )
    out = out_folder(args.out or out_dir, "--out")
    cost, objectives = _cost(args, uri, experiment), _objectives(args, uri, experiment)
    with tempfile.TemporaryDirectory() as tmp:
        data = read_report_data(
            uri, experiment, how, args.pick, Path(tmp), cost=cost, objectives=objectives
        )
    path = out / "report.html"
    with writing_into(out):
        path.write_text(build_html(data))
    say(f"wrote {path} ({len(data.rows)} trials, {len(data.front_ids)} on the front)")
    if not args.json:
        print(path)
    return {"report": str(path), "trials": len(data.rows), "front": sorted(data.front_ids)}
