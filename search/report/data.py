"""What a search's report shows (ReportData), read back from MLflow; its plots are drawn by
search/report/plots.py and the page is written by search/report/html.py."""

from __future__ import annotations

import json
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pruning import schedule as schedule_io
from pruning.compute import COSTS, DEFAULT_COST, CostObjective
from pruning.models import build_model, example_input
from pruning.prune import channel_floor, channel_groups, layer_widths
from pruning.run_info import ModelInfo, with_model_section
from search import accounting, importance
from search.accounting import per_trial_cost
from search.importance import WhatMattered
from search.objectives import Objective
from search.pareto import DEFAULT, Pick, front, pick
from search.report.plots import (
    RECAL_KEYS,
    STAGE_KEYS,
    StagePoint,
    plot_front,
    plot_schedule_accuracy,
    plot_speedups,
    plot_widths,
    stage_points,
)
from search.trials import TrialRow, load_rows, search_cost, search_objectives
from trainables import tracking

# name -> file; also the order the report shows them in
FILES = {
    "pareto": "pareto.png",
    "pareto_latency": "pareto_latency.png",  # a front on cost and latency: its latency view
    "speedups": "speedups.png",
    "widths": "widths.png",
    "accuracy": "accuracy.png",
    "accuracy_front": "accuracy_front.png",
}
CAPTIONS = {
    "pareto": "Validation accuracy against the search's objective (its cost, or the measured "
    "latency) for every completed trial; the front "
    "as a staircase (the best accuracy reachable within a budget; a front on three objectives "
    "as points), the reference recipe as a star and the chosen trial circled.",
    "pareto_latency": "The same trials and front against the measured latency of the pruned "
    "model (ms per batch at the first of latency.batches).",
    "speedups": "Measured latency speed-up (dense over pruned, same process and threads, first "
    "of latency.batches) against the MACs speed-up; on the dashed diagonal fewer MACs are as "
    "much faster.",
    "widths": "Channels the chosen trial keeps per layer (by the model's own layer names, log "
    "scale) against the original width, with the per-layer floor dashed; collapsed layers are "
    "red; layers Torch-Pruning prunes together (a residual stage, a depthwise pair) share a "
    "coloured bracket.",
    "accuracy": "Accuracy of the chosen trial through its schedule: each prune drops it (down "
    "triangle: raw; diamond: after BatchNorm recalibration, the honest accuracy of the pruned "
    "weights), each fine-tune recovers it.",
    "accuracy_front": "The same for every trial on the Pareto front.",
}


@dataclass(frozen=True)
class Figure:
    caption: str
    png: bytes


@dataclass(frozen=True)
class ReportData:
    experiment: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    ui_command: str  # how to open the MLflow UI on this store
    config_yaml: str  # the experiment as the search resolved it
    search_space: dict[str, str]  # dimension -> readable range
    rows: list[TrialRow]
    front_ids: set[str]  # run ids on the Pareto front
    pick: TrialRow | None
    pick_how: str  # e.g. "knee"
    schedule_yaml: str  # the pick's schedule file ("" without a pick)
    base_acc: float | None = None
    figures: list[Figure] = field(default_factory=list)
    model: str = ""  # what the search pruned, e.g. "RESNET56 x0.5" ("" when unknown)
    cost: CostObjective = COSTS[DEFAULT_COST]  # what the front is built on
    objectives: tuple[Objective, ...] = DEFAULT  # what it ranks by (search.objectives)
    # What mattered for val acc (search.importance; empty for a search that logged none)
    what_mattered: tuple[str, ...] = ()
    search_cost: float = 0.0  # fine-tune compute of all trials, in the cost unit (accounting)
    wall_s: float | None = None  # the search's wall time (None: not logged)


def curve(uri: str, row: TrialRow) -> list[StagePoint]:
    keys = list(STAGE_KEYS + RECAL_KEYS)
    return stage_points(tracking.metric_history(uri, row.run_id, keys))


@dataclass(frozen=True)
class LayerData:
    """Per pruned layer of a trial's final model (by the model's own module names, in module
    order): channels kept, the unpruned model's, and the floor; and the channel groups (layers
    Torch-Pruning cuts together) with more than one layer."""

    model: str  # e.g. "RESNET56 x0.5, 10 classes"
    kept: dict[str, int]
    original: dict[str, int]
    floors: dict[str, int]
    groups: tuple[tuple[str, ...], ...]


def layer_data(schedule_file: Path, widths_file: Path) -> LayerData:
    """The widths plot's data for a trial, from its schedule file (which model, which floor) and
    widths.json (what it kept); the unpruned model is rebuilt from the registry."""
    schedule, run = schedule_io.load(schedule_file)
    info = run.model if run and run.model else ModelInfo()
    kept = json.loads(widths_file.read_text())
    size = run.data.image_size if run and run.data else None
    # The classifier's outputs (the last layer) are the classes, and are never pruned.
    spec = info.spec(info.num_classes or int(list(kept.values())[-1]), size)
    model = build_model(spec)
    original = layer_widths(model)
    output = list(original)[-1]
    names = [n for n in original if n != output and n in kept]
    floors = {
        n: channel_floor(
            original[n], schedule.min_channels, schedule.min_channel_ratio, schedule.round_to
        )
        for n in names
    }
    coupled = [g for g in channel_groups(model, example_input(spec)) if len(g) > 1]
    return LayerData(
        info.describe(),
        {n: kept[n] for n in names},
        {n: original[n] for n in names},
        floors,
        tuple(tuple(n for n in g if n in floors) for g in coupled),
    )


def label(
    row: TrialRow, chosen: TrialRow | None = None, cost: CostObjective = COSTS[DEFAULT_COST]
) -> str:
    extra = " (reference)" if row.reference else ""
    extra += " (pick)" if chosen is not None and row.run_id == chosen.run_id else ""
    return f"{row.trial_id}: {row.val_acc:.1%} at {cost.format(row.cost)}{extra}"


def render_plots(
    uri: str,
    rows: Sequence[TrialRow],
    on_front: Sequence[TrialRow],
    folder: Path,
    chosen: TrialRow | None = None,
    pick_label: str = "exported pick",
    base_acc: float | None = None,
    cost: CostObjective = COSTS[DEFAULT_COST],
    objectives: Sequence[Objective] = DEFAULT,
) -> dict[str, Path]:
    """Every plot of FILES into `folder`; the widths and single-trial plots need a chosen trial."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = _front_plots(rows, on_front, folder, chosen, pick_label, cost, objectives)
    if on_front:
        shown = front_to_draw(on_front, chosen)
        curves = tracking.concurrently([lambda r=r: curve(uri, r) for r in shown])
        of = f"{len(shown)} most accurate of {len(on_front)}" if len(shown) < len(on_front) else ""
        paths["accuracy_front"] = plot_schedule_accuracy(
            {label(r, chosen, cost): c for r, c in zip(shown, curves, strict=True)},
            folder / FILES["accuracy_front"],
            f"Accuracy through the schedule of the Pareto front ({of or len(on_front)} trials)",
            base_acc,
        )
    if chosen is not None:
        paths |= _chosen_plots(uri, chosen, folder, base_acc, cost)
    return {k: paths[k] for k in FILES if k in paths}


# More overlaid sawtooth curves than this are unreadable (and each costs a metric read): a front
# of ties, e.g. many prune-only trials, draws its most accurate trials and the pick.
MAX_FRONT_CURVES = 12


def front_to_draw(on_front: Sequence[TrialRow], chosen: TrialRow | None) -> list[TrialRow]:
    best = sorted(on_front, key=lambda r: -r.val_acc)[:MAX_FRONT_CURVES]
    if chosen is not None and chosen in on_front and chosen not in best:
        best[-1] = chosen
    return best


def _front_plots(
    rows: Sequence[TrialRow],
    on_front: Sequence[TrialRow],
    folder: Path,
    chosen: TrialRow | None,
    pick_label: str,
    cost: CostObjective,
    objectives: Sequence[Objective],
) -> dict[str, Path]:
    """The front against each objective beside accuracy (pareto.png on the first), and the
    MACs against the measured speed-up when the trials measured latency."""
    axes = [o for o in objectives if o.name != "val_acc"]
    staircase = len(axes) == 1
    paths = {}
    for key, x in zip(("pareto", "pareto_latency"), axes, strict=False):
        path = folder / FILES[key]
        paths[key] = plot_front(rows, on_front, path, chosen, pick_label, cost, x, staircase)
    speedups = plot_speedups(rows, on_front, folder / FILES["speedups"], chosen, pick_label)
    return paths | ({"speedups": speedups} if speedups else {})


def _chosen_plots(
    uri: str, chosen: TrialRow, folder: Path, base_acc: float | None, cost: CostObjective
) -> dict[str, Path]:
    with tempfile.TemporaryDirectory() as tmp:
        schedule_file = tracking.download(uri, chosen.run_id, "final/schedule.yaml", Path(tmp))
        widths_file = tracking.download(uri, chosen.run_id, "final/widths.json", Path(tmp))
        layers = layer_data(schedule_file, widths_file)
        schedule, _ = schedule_io.load(schedule_file)
    floor = f"max({schedule.min_channels}, ceil({schedule.min_channel_ratio:g} \u00d7 original))"
    # the importances its stages pruned with (a PBT lineage: "group_norm, lamp")
    importances = ", ".join(dict.fromkeys(map(schedule.importance_at, range(len(schedule.stages)))))
    plot_widths(
        layers.kept,
        layers.original,
        layers.floors,
        folder / FILES["widths"],
        f"{layers.model}: channels kept per layer, trial {chosen.trial_id} at "
        f"{chosen.speedup:.2f}x MACs speed-up\n"
        f"{importances} importance, {schedule.ranking} ranking, floor {floor}",
        groups=layers.groups,
    )
    summary = "\n".join(textwrap.wrap(chosen.schedule, 90))
    accuracy = plot_schedule_accuracy(
        {label(chosen, cost=cost): curve(uri, chosen)},
        folder / FILES["accuracy"],
        f"Accuracy through the schedule of trial {chosen.trial_id}\n{summary}",
        base_acc,
    )
    return {"widths": folder / FILES["widths"], "accuracy": accuracy}


def _text(uri: str, run_id: str, path: str) -> str:
    """An artifact's text, or "" when the run has none (a search from an older version)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return tracking.download(uri, run_id, path, Path(tmp)).read_text()
        except RuntimeError:
            return ""


def read_report_data(
    uri: str,
    experiment: str,
    how: Pick,
    how_text: str,
    plots_dir: Path,
    parent_id: str | None = None,
    cost: CostObjective | None = None,
    objectives: Sequence[Objective] | None = None,
) -> ReportData:
    """Everything the report shows, for the latest search (or `parent_id`'s), costed by `cost`
    (default: the objective that search chose); the plots are written to `plots_dir` as well."""
    parent_id = parent_id or tracking.latest_parent(uri, experiment)
    searched_by = search_cost(uri, parent_id)
    cost = cost or searched_by
    objectives = tuple(objectives or search_objectives(uri, parent_id))
    rows = load_rows(uri, experiment, parent_id, cost)
    on_front = front(rows, objectives)
    chosen = pick(rows, how, objectives) if any(r.usable for r in rows) else None
    parent_metrics = tracking.run_metrics(uri, parent_id)
    base_acc = parent_metrics.get("base_val_acc")
    mattered = WhatMattered.from_json(_text(uri, parent_id, importance.FILE))
    config_yaml = _text(uri, parent_id, "experiment.yaml")
    paths = render_plots(
        uri, rows, on_front, plots_dir, chosen, how_text, base_acc, cost, objectives
    )
    return ReportData(
        experiment=experiment,
        tracking_uri=uri,
        experiment_id=tracking.experiment_id(uri, experiment),
        parent_run_id=parent_id,
        ui_command=tracking.ui_command(uri),
        config_yaml=config_yaml,
        search_space=space_from_json(_text(uri, parent_id, "search_space.json")),
        rows=rows,
        front_ids={r.run_id for r in on_front},
        pick=chosen,
        pick_how=how_text,
        schedule_yaml=_text(uri, chosen.run_id, "final/schedule.yaml") if chosen else "",
        base_acc=base_acc,
        figures=[Figure(CAPTIONS[k], p.read_bytes()) for k, p in paths.items()],
        model=model_text(config_yaml),
        cost=cost,
        objectives=objectives,
        what_mattered=tuple(mattered.lines()) if mattered else (),
        search_cost=_spent(parent_metrics, rows, same_unit=cost == searched_by),
        wall_s=parent_metrics.get(accounting.WALL),
    )


def _spent(parent_metrics: dict[str, float], rows: Sequence[TrialRow], same_unit: bool) -> float:
    """The search's compute: what its accounting logged on the parent run (exact also for PBT,
    where an exploiter's copied prefix counts once, at its donor), else (older searches, or a
    report in another cost unit than the search's) the trials' own costs summed."""
    logged = parent_metrics.get(accounting.SEARCH_COST)
    return logged if same_unit and logged is not None else per_trial_cost(rows)


def model_text(config_yaml: str) -> str:
    """The model of a search's experiment.yaml (an old one's top-level width: VGG19's)."""
    raw = yaml.safe_load(config_yaml) if config_yaml.strip() else None
    if not isinstance(raw, dict):
        return ""
    try:
        return with_model_section({k: raw[k] for k in ("model", "width") if k in raw})[
            "model"
        ].describe()
    except ValueError:
        return ""


def space_from_json(text: str) -> dict[str, str]:
    loaded = json.loads(text) if text.strip() else {}
    return {str(k): str(v) for k, v in loaded.items()}
