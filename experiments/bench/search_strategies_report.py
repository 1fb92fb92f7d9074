"""`search_strategies.py report`: the strategies' section of RESULTS.md, its figure and the first
seed's exported models, from the finished searches and replays.

The anytime curves are the parent runs' MLflow metric histories (search/accounting.py:
`best_val_acc` and `search_cost`, both at step = compute in 1/1000 TMAC). Test accuracy is
computed here only, on the replayed models: the held-out test images are read in this step.
Only (strategy, seed) pairs whose search and replay finished are reported; the rest are named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments.recovery_levers.report import TestSet, welch_t
from pruning import schedule as schedule_io
from search.accounting import BEST_SO_FAR, SEARCH_COST, STEPS_PER_UNIT, WALL
from search.config import load_config
from search.report.plots import pyplot, save
from trainables import tracking

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "torch-pruning", "ray", "optuna", "mlflow")
BEGIN, END = "<!-- search_strategies:begin -->", "<!-- search_strategies:end -->"
FIGURE = "search_strategies_anytime.png"
MODELS = "search_strategies"  # folder beside RESULTS.md: <strategy>/{schedule.yaml,pruned.pt,...}
Curve = list[tuple[float, float]]  # (compute spent in TMACs, best val acc so far), rising


@dataclass(frozen=True)
class Search:
    strategy: str
    seed: int
    curve: Curve
    spent: float  # TMACs the search accounted in all
    wall_s: float
    budget: float  # TMACs
    unit: float  # U: one full trial, TMACs
    replay_val: float
    test: float

    def best_at(self, x: float) -> float | None:
        """The best val acc found with at most x TMACs spent (None: none finished by then)."""
        seen = [acc for cost, acc in self.curve if cost <= x]
        return max(seen) if seen else None

    def reaches(self, level: float) -> float | None:
        """The compute at which the best so far first reached `level` (None: never)."""
        return next((cost for cost, acc in self.curve if acc >= level), None)


def curve_of(uri: str, parent: str) -> tuple[Curve, float, float]:
    """The anytime curve, the total compute and the wall seconds of one search."""
    history = tracking.metric_history(uri, parent, [BEST_SO_FAR, SEARCH_COST])
    best, best_so_far, curve = history[BEST_SO_FAR], None, []
    for step in sorted(history[SEARCH_COST]):
        found = [v for s, v in best.items() if s <= step]
        if found:
            best_so_far = max(found)
            curve.append((step / STEPS_PER_UNIT, best_so_far))
    spent = max(history[SEARCH_COST].values(), default=0.0)
    wall = float(tracking.run_metrics(uri, parent).get(WALL, float("nan")))
    return curve, spent, wall


def collect(bench: Any) -> tuple[list[Search], list[str]]:
    tests = TestSet(bench.ablation.data())
    found, missing = [], []
    for strategy in bench.strategies():
        for seed in bench.c["search_seeds"]:
            folder = bench.folder(strategy, seed)
            replay = folder / "replay" / "metrics.json"
            metrics = json.loads(replay.read_text()) if replay.exists() else {}
            if metrics.get("completed") != 1.0:
                missing.append(f"{strategy} seed {seed}")
                continue
            experiment = folder / "experiment_input.yaml"
            config = load_config(experiment)
            parent = json.loads((folder / "search.json").read_text())["parent_run_id"]
            curve, spent, wall = curve_of(config.tracking_uri, parent)
            unit = bench.unit_tmacs(experiment)
            found.append(
                Search(
                    strategy, seed, curve, spent, wall, bench.c["budget_trials"] * unit, unit,
                    float(metrics["val_acc"]), tests.accuracy(folder / "replay"),
                )
            )  # fmt: skip
    return found, missing


def _ms(values: list[float], scale: float = 100.0, fmt: str = ".2f") -> str:
    if not values:
        return "-"
    mean = format(scale * statistics.mean(values), fmt)
    return mean if len(values) < 2 else f"{mean} ± {format(scale * statistics.stdev(values), fmt)}"


def by_strategy(searches: list[Search]) -> dict[str, list[Search]]:
    out: dict[str, list[Search]] = {}
    for s in searches:
        out.setdefault(s.strategy, []).append(s)
    return out


def random_level(groups: dict[str, list[Search]]) -> float | None:
    """Random's final best within the budget, mean over its seeds (what others must reach)."""
    finals = [s.best_at(s.budget) for s in groups.get("random", [])]
    finals = [f for f in finals if f is not None]
    return statistics.mean(finals) if finals else None


def anytime_figure(groups: dict[str, list[Search]], path: Path) -> Path:
    """Best val acc so far against compute, mean over seeds (drawn where every seed has a
    finished trial), with the budget as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(s.spent for g in groups.values() for s in g)
    grid = [top * i / 300 for i in range(301)]
    for i, (strategy, group) in enumerate(groups.items()):
        end = min(s.spent for s in group)  # no line past what every seed spent
        points = [(x, [s.best_at(x) for s in group]) for x in grid if x <= end]
        xs = [x for x, v in points if None not in v]
        ys = [100 * statistics.mean(v) for _, v in points if None not in v]
        ax.plot(xs, ys, drawstyle="steps-post", color=f"C{i}", label=f"{strategy} ({len(group)})")
    budget = next(iter(groups.values()))[0].budget
    ax.axvline(budget, color="grey", ls="--", lw=1, label="budget")
    ax.set_xlabel("fine-tune compute spent by the search (train TMACs)")
    ax.set_ylabel("best val accuracy so far (%), mean over seeds")
    ax.set_title("search strategies at equal compute: anytime curves", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def summary_table(groups: dict[str, list[Search]], level: float | None) -> str:
    lines = [
        "| strategy | seeds | best val acc at the budget (%) | compute spent (x budget) | "
        "replayed val acc (%) | test acc of the replayed best (%) | compute to reach random's "
        "final best (x budget; seeds that did) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for strategy, group in groups.items():
        finals = [f for s in group if (f := s.best_at(s.budget)) is not None]
        reach = [r / s.budget for s in group if level and (r := s.reaches(level)) is not None]
        reached = f"{_ms(reach, 1.0)} ({len(reach)} of {len(group)})" if level else "-"
        lines.append(
            f"| {strategy} | {len(group)} | {_ms(finals)} | "
            f"{_ms([s.spent / s.budget for s in group], 1.0)} | "
            f"{_ms([s.replay_val for s in group])} | {_ms([s.test for s in group])} | {reached} |"
        )
    return "\n".join(lines)


def seed_table(searches: list[Search]) -> str:
    lines = [
        "| strategy | seed | best val acc at the budget (%) | best val acc at the end (%) | "
        "spent (TMACs) | wall | replayed val acc (%) | test acc (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in searches:
        at = s.best_at(s.budget)
        end = s.curve[-1][1] if s.curve else None
        lines.append(
            f"| {s.strategy} | {s.seed} | {'-' if at is None else f'{100 * at:.2f}'} | "
            f"{'-' if end is None else f'{100 * end:.2f}'} | {s.spent:.3g} | "
            f"{s.wall_s / 60:.1f} min | {100 * s.replay_val:.2f} | {100 * s.test:.2f} |"
        )
    return "\n".join(lines)


def verdict(groups: dict[str, list[Search]], level: float | None) -> str:
    """The issue's two targets, measured against random."""
    if "random" not in groups or len(groups) < 2:
        return "Random and at least one other strategy must finish before the targets can be read."
    rnd = statistics.mean(s.test for s in groups["random"])
    lines = []
    for strategy, group in groups.items():
        if strategy == "random":
            continue
        gap = 100 * (statistics.mean(s.test for s in group) - rnd)
        tests = ([s.test for s in group], [s.test for s in groups["random"]])
        t = f", Welch t {welch_t(*tests):+.1f}" if min(map(len, tests)) >= 2 else ""
        reach = [s.reaches(level) / s.budget for s in group if level and s.reaches(level)]
        half = len(reach) == len(group) and statistics.mean(reach) <= 0.5
        met = "met" if gap >= 1 else "not met"
        if gap >= 1 and t and abs(welch_t(*tests)) < 2:
            met = "met on the mean, but within the seeds' noise (|t| < 2)"
        lines.append(
            f"- **{strategy}**: test accuracy {gap:+.2f} points against random's pick{t} (target "
            f">= +1: {met}); reached random's final best in "
            f"{len(reach)} of {len(group)} seeds"
            + (f", at {statistics.mean(reach):.0%} of the budget on average" if reach else "")
            + f" (target <= 50% in every seed: {'met' if half else 'not met'})."
        )
    return "\n".join([*lines, replay_noise(groups)])


def replay_noise(groups: dict[str, list[Search]]) -> str:
    """How far a pick's val acc moved when replayed on a new seed: the training noise of one
    trial, which every difference above is to be read against."""
    moves = [s.replay_val - s.curve[-1][1] for g in groups.values() for s in g if s.curve]
    if len(moves) < 2:
        return ""
    return (
        f"- **Seed noise**: replayed on a new seed, the {len(moves)} picks' val acc moved by "
        f"{_ms(moves)} points (largest {100 * max(moves, key=abs):+.2f}): a pick's search-time "
        "val acc carries that much training noise, and the best of a search's noisy trials "
        "is biased upwards (so replayed values fall on average)."
    )


def keep_models(bench: Any, results: Path) -> list[str]:
    """Each strategy's first-seed export: the search's best trial, its schedule and weights."""
    kept, seed = [], bench.c["search_seeds"][0]
    # `run` may have run in another checkout of this repository (a worktree, so that edits here
    # did not change the code it ran): its paths are this checkout's.
    ran_in = checkout_of(bench.out)
    for strategy in bench.strategies():
        src = bench.folder(strategy, seed) / "export"
        if not (src / "pruned.pt").exists():
            continue
        dst = results / MODELS / strategy
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "pruned.pt", dst / "pruned.pt")
        metrics = (src / "metrics.json").read_text().replace(f"{ran_in}/", "")
        (dst / "metrics.json").write_text(metrics.replace(f"{ROOT}/", ""))
        # Re-written, not copied: its paths become relative to the committed copy's folder.
        schedule, run = schedule_io.load(src / "schedule.yaml")  # its paths made absolute
        if run.checkpoint and Path(run.checkpoint).is_relative_to(ran_in):
            mine = ROOT / Path(run.checkpoint).relative_to(ran_in)
            run = dataclasses.replace(run, checkpoint=str(mine))
        schedule_io.save(dst / "schedule.yaml", schedule, run, project=ROOT)
        size = (dst / "pruned.pt").stat().st_size / 1e3
        kept.append(f"`{MODELS}/{strategy}/` ({size:.0f} kB)")
    return kept


def checkout_of(path: Path) -> Path:
    """The git checkout (a clone or a worktree: `.git` a folder or a file) holding `path`;
    this one when there is none."""
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return ROOT


def machine() -> str:
    pkgs = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    return (
        f"{platform.machine()} Linux, {os.cpu_count()} CPU cores, no GPU; {pkgs}; "
        f"Python {platform.python_version()}"
    )


def section(bench: Any, searches: list[Search], missing: list[str], kept: list[str]) -> str:
    c, groups = bench.c, by_strategy(searches)
    level = random_level(groups)
    unit = searches[0].unit if searches else float("nan")
    skipped = [s for s in c["strategies"] if s not in bench.strategies()]
    commands = "\n".join(f"    {cmd}" for cmd in list(bench.commands.values())[:4])
    smoke = (
        "\n**Smoke run** (`--smoke`: generated JPEGs, a 1-epoch baseline): proves the script "
        "runs; its numbers are not results.\n"
        if bench.smoke
        else ""
    )
    return f"""{BEGIN}
## Search strategies at equal compute (`search_strategies.py`)
{smoke}
    python experiments/bench/search_strategies.py run      # about 1.5 hours here (2 cores)
    python experiments/bench/search_strategies.py report   # this section

Each strategy searched {len(c["search_seeds"])} times (search seeds {c["search_seeds"]}) for the
best schedule of VGG19 x{c["width"]} at {c["target_speedup"]}x MACs, starting from the
recovery-levers issue's converged baseline (`{os.path.relpath(bench.baseline, ROOT)}`).

- **Proxy**: width {c["width"]}; the real CIFAR-10 JPEGs with the study's split
  ({c["data"]["test_per_class"]} per class held out as test, {c["data"]["val_size"]} val carved
  from the rest, {c["data"]["train_subset"]} training images per epoch); every trial fine-tunes
  {c["trial_epochs"]} epochs in 1-{c["space"]["max_stages"]} stages; no reference trial (every
  trial is the strategy's own choice); latency not measured.
- **Budget**: {c["budget_trials"]} full trials' worth per search, U = {unit:.4g} train TMACs
  ({c["trial_epochs"]} epochs of the {c["target_speedup"]}x model), so {c["budget_trials"]} U.
  Every search but pbt's is stopped by this script once the parent run's accounted `search_cost`
  reaches it (the crossing trial counts, trials in flight are stopped); pbt's population is
  sized to it instead (stopping it would leave no finished lineage).
  {"Not run: " + ", ".join(skipped) + " (not registered)." if skipped else ""}
- **Pick and test**: `prunetune export --pick max-acc` (best val acc), replayed once on seed
  {c["replay_seed"]}; its held-out test accuracy is computed only by `report`.
- **Machine**: {machine()}.
{f"- **Missing** (search or replay not finished): {', '.join(missing)}." if missing else ""}

![anytime curves]({FIGURE})

{summary_table(groups, level)}

Random's final best (mean over its seeds, within the budget):
{"-" if level is None else f"{100 * level:.2f}%"}.

{verdict(groups, level)}

Per search:

{seed_table(searches)}

Where it falls short: three seeds per strategy, so differences under about the seed spread
above are noise; a {c["trial_epochs"]}-epoch, {c["data"]["train_subset"]}-image proxy ranks
schedules by short-budget recovery, which need not rank them the same at the study's budget; pbt's
compute is held to the budget by its population size, not stopped at it (see its "compute
spent"); the budget stop overshoots by up to one stage of one trial, and the stopped in-flight
trials' last partial stage is not counted (no report carries it). tpe with Ray's ASHA (rungs
in dense epochs) is not run: a {c["trial_epochs"]}-epoch trial computes less than one dense
epoch, ASHA's smallest rung, so it would never stop a trial; `tpe+stage_rungs` is tpe with
the stage-rung early stopping instead (`asha.rungs: stages`, search/stage_rungs.py: a rung at
every stage but the last, promoting the top third by non-dominated rank on val acc and compute
so far), which compares trials at their own stage-1 speed-ups.

Committed: each strategy's first-seed export (the search's best trial, schedule and weights):
{", ".join(kept) or "none"}. The first commands, as run from the repository root:

{commands}
{END}"""


def write_section(path: Path, text: str) -> None:
    """Replace the section between the markers, or append it."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def write_report(bench: Any, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    searches, missing = collect(bench)
    if not searches:
        raise SystemExit(f"nothing finished yet under {bench.out}: run `run` first")
    anytime_figure(by_strategy(searches), results / FIGURE)
    kept = keep_models(bench, results)
    path = results / "RESULTS.md"
    write_section(path, section(bench, searches, missing, kept))
    return path
