"""The report's pictures: the Pareto front, per-layer widths, accuracy through a schedule.

Pure: plain data in, a PNG out (matplotlib's Agg backend, so it runs on headless nodes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning.compute import COSTS, DEFAULT_COST, CostObjective
from search.objectives import OBJECTIVES, Objective
from search.trials import left_out

if TYPE_CHECKING:
    from search.trials import TrialRow

COLLAPSE = 0.1  # a layer keeping under 10% of its channels has collapsed
DPI = 130
OK, AT_FLOOR, COLLAPSED = "C0", "#e69f00", "#d62728"  # width bars; collapsed also get text
FRONT = "#d62728"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG at DPI and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox "tight" keeps legends placed outside the axes inside the image
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return path


def _pct(values: Sequence[float]) -> list[float]:
    return [100 * v for v in values]


# -- the Pareto front ---------------------------------------------------------------------------


def plot_front(
    rows: Sequence[TrialRow],
    on_front: Sequence[TrialRow],
    path: Path,
    pick: TrialRow | None = None,
    pick_label: str = "exported pick",
    cost: CostObjective = COSTS[DEFAULT_COST],
    x: Objective = OBJECTIVES["cost"],
    staircase: bool = True,
) -> Path:
    """Accuracy against the objective `x` (the search's cost, `cost`, by default; or latency),
    named with its unit on the x axis, for every completed trial; the front as a staircase (at
    any budget the best reachable accuracy is the last front point at or below it). A front on
    three objectives is not a staircase in any two of them: `staircase` False marks its points
    only."""
    plt = pyplot()
    usable = [r for r in rows if r.usable]
    if x.name != "cost":  # trials that did not measure latency (NaN) are not on its axis
        usable = [r for r in usable if _x(r, x) == _x(r, x)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _draw_trials_and_front(ax, usable, on_front, x, staircase)
    _mark_reference_and_pick(ax, usable, pick, pick_label, x)
    _label_front_axes(ax, rows, left_out(rows), x.axis(cost), x.label)
    _front_limits(ax, usable, cost, x)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=9)
    return save(fig, path)


def _x(r: TrialRow, x: Objective) -> float:
    return float(getattr(r, x.metric))


def _draw_trials_and_front(
    ax: Any, usable: list[TrialRow], on_front: Sequence[TrialRow], x: Objective, staircase: bool
) -> None:
    """Every completed trial as a grey dot; the front as a staircase through its points (or its
    points alone)."""
    xs = [_x(r, x) for r in usable]
    ax.scatter(xs, _pct([r.val_acc for r in usable]), c="0.6", s=30, zorder=2)
    ax.scatter([], [], c="0.6", s=30, label=f"completed trial ({len(usable)})")
    shown = sorted(on_front, key=lambda r: _x(r, x))
    ax.plot(
        [_x(r, x) for r in shown],
        _pct([r.val_acc for r in shown]),
        "o-" if staircase else "o",
        c=FRONT,
        drawstyle="steps-post",
        zorder=3,
        label=f"Pareto front ({len(on_front)})",
    )


def _label_front_axes(
    ax: Any, rows: Sequence[TrialRow], left_out: int, axis: str, what: str
) -> None:
    """Axis names with the unit, the title, and a note on the trials not shown."""
    ax.set_xlabel(f"{what}: {axis} per trial" if what == "cost" else axis)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Accuracy vs. {what} at {_target(rows)} MACs speed-up")
    if left_out:
        ax.annotate(
            f"{left_out} trial(s) failed or stopped early: not shown",
            (0, -0.17),
            xycoords="axes fraction",
            fontsize=8,
            color="0.4",
        )


def _front_limits(ax: Any, usable: list[TrialRow], cost: CostObjective, x: Objective) -> None:
    """Whole epochs on an epoch axis; one tick when every trial had one budget; a message
    instead of empty axes when no trial completed."""
    epochs = x.name == "cost" and cost.unit == "epochs"
    if epochs:
        _integer_x(ax)
    _margins(ax, [r.val_acc for r in usable])
    costs = {_x(r, x) for r in usable}
    if len(costs) == 1:  # one budget for every trial: one tick, not fractions of an epoch
        (only,) = costs
        half = 1.0 if epochs else max(0.1 * abs(only), 1e-9)
        ax.set_xlim(only - half, only + half)
        ax.set_xticks([only])
    if not usable:  # say so, rather than show empty axes around 0
        ax.set(xlim=(0, 1), ylim=(0, 100), xticks=[])
        ax.text(0.5, 0.5, "no trial completed its schedule", ha="center", transform=ax.transAxes)


def _mark_reference_and_pick(
    ax: Any, usable: Sequence[TrialRow], pick: TrialRow | None, pick_label: str, x: Objective
) -> None:
    for r in (r for r in usable if r.reference):
        ax.scatter(
            _x(r, x),
            100 * r.val_acc,
            marker="*",
            s=260,
            c="gold",
            edgecolors="k",
            zorder=4,
            label="reference: Torch-Pruning one-shot",
        )
    if pick is not None:  # a ring, so the front's marker under it stays visible
        ax.scatter(
            _x(pick, x),
            100 * pick.val_acc,
            s=380,
            facecolors="none",
            edgecolors="k",
            linewidths=2,
            zorder=5,
            label=f"{pick_label}: {pick.trial_id}",
        )


def _target(rows: Sequence[TrialRow]) -> str:
    """Every completed trial lands within 1% of the target; the median names it."""
    speedups = sorted(r.speedup for r in rows if r.usable)
    return f"\u2248{speedups[len(speedups) // 2]:.2f}x" if speedups else "the target"


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _margins(ax: Any, accs: Sequence[float]) -> None:
    """Room around the points so big markers are not clipped at the axes."""
    if accs:
        low, high = 100 * min(accs), 100 * max(accs)
        pad = max(1.0, 0.15 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    ax.margins(x=0.12)


# -- MACs speed-up against the measured one ----------------------------------------------------


def plot_speedups(
    rows: Sequence[TrialRow],
    on_front: Sequence[TrialRow],
    path: Path,
    pick: TrialRow | None = None,
    pick_label: str = "exported pick",
) -> Path | None:
    """The measured latency speed-up (dense over pruned, at the first of latency.batches)
    against the MACs speed-up, for every completed trial that measured it; the diagonal is
    "fewer MACs, as much faster". None (no file) when no trial measured latency."""
    usable = [r for r in rows if r.usable and r.latency_speedup == r.latency_speedup]
    if not usable:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.scatter([r.speedup for r in usable], [r.latency_speedup for r in usable], c="0.6", s=30)
    ax.scatter([], [], c="0.6", s=30, label=f"completed trial ({len(usable)})")
    front_ids = {r.run_id for r in on_front}
    shown = [r for r in usable if r.run_id in front_ids]
    ax.scatter(
        [r.speedup for r in shown],
        [r.latency_speedup for r in shown],
        c=FRONT,
        s=40,
        zorder=3,
        label=f"Pareto front ({len(shown)})",
    )
    if pick is not None and pick in usable:
        ax.scatter(
            pick.speedup,
            pick.latency_speedup,
            s=380,
            facecolors="none",
            edgecolors="k",
            linewidths=2,
            zorder=5,
            label=f"{pick_label}: {pick.trial_id}",
        )
    top = max(max(r.speedup for r in usable), max(r.latency_speedup for r in usable)) * 1.1
    ax.plot([1, top], [1, top], ls="--", c="0.5", lw=1, label="measured = MACs")
    ax.set_xlabel("MACs speed-up (x)")
    ax.set_ylabel("measured latency speed-up (x)")
    ax.set_title("What the MACs speed-up is worth on the trials' device")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=9)
    return save(fig, path)


# -- per-layer widths ---------------------------------------------------------------------------


def short_name(layer: str) -> str:
    """VGG's conventional names: block0.3 -> conv1_2 (block b, conv at module index 3k)."""
    match = re.fullmatch(r"block(\d+)\.(\d+)", layer)
    if match is None:
        return "fc" if layer == "classifier" else layer
    block, index = int(match[1]), int(match[2])
    return f"conv{block + 1}_{index // 3 + 1}"


def layer_label(layer: str) -> str:
    """The model's own module name, with VGG's conventional name beside it where there is one."""
    short = short_name(layer)
    return layer if short == layer else f"{layer} ({short})"


def layer_status(kept: int, original: int, floor: int) -> str:
    if kept < COLLAPSE * original:
        return "collapsed"
    if kept <= floor < original:
        return "at floor"  # the ranking wanted it narrower; only the floor kept these channels
    return "ok"


# Coupled groups' colours: none of the status colours (blue, orange, red) or the bars' grey.
GROUP_COLOURS = ("#7b3294", "#1b9e77", "#8c510a", "#e7298a", "#66a61e", "#17becf", "#525252")
ROW_INCHES = 0.24  # height of one layer's row: 16 layers (VGG19) fit 5 in, 53 (ResNet-50) 14 in


def plot_widths(
    kept: dict[str, int],
    original: dict[str, int],
    floors: dict[str, int],
    path: Path,
    title: str,
    groups: Sequence[Sequence[str]] = (),
) -> list[str]:
    """Channels kept against the original width, one row per layer from the first (top) to the
    last, on a log scale (1-4 channels still show next to 512), labelled with the model's own
    names. `groups`: layers pruned together (residual stages, depthwise pairs), each marked by a
    coloured bracket on the right. Horizontal rows keep 50+ layers readable. Returns the
    collapsed layers."""
    plt = pyplot()
    names = list(kept)
    status = [layer_status(kept[n], original[n], floors[n]) for n in names]
    fig, ax = plt.subplots(figsize=(9.0, max(4.0, ROW_INCHES * len(names) + 1.6)))
    _width_bars(ax, names, kept, original, floors, status)
    _log2_x(ax, max(original.values()))
    ax.set_yticks(range(len(names)), [layer_label(n) for n in names], fontsize=7)
    ax.set_ylim(len(names) - 0.4, -0.6)  # first layer on top
    ax.set_ylabel("layer (module name)")
    ax.set_xlabel("output channels (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    brackets = _group_brackets(ax, names, groups)
    side = 1.03 + 0.025 * min(brackets, 4) + (0.03 if brackets else 0.0)  # right of the brackets
    ax.legend(loc="upper left", bbox_to_anchor=(side, 1.0), borderaxespad=0, fontsize=8)
    collapsed = [n for n, s in zip(names, status, strict=True) if s == "collapsed"]
    if collapsed:  # spelled out next to the plot, in case the red bars are missed
        text = "\n".join(f"{layer_label(n)}: {kept[n]} of {original[n]}" for n in collapsed)
        ax.annotate(
            f"collapsed:\n{text}",
            (side, 0.0),
            xycoords="axes fraction",
            va="bottom",
            fontsize=8,
            color=COLLAPSED,
            fontweight="bold",
        )
    save(fig, path)
    return collapsed


def _width_bars(
    ax: Any,
    names: list[str],
    kept: dict[str, int],
    original: dict[str, int],
    floors: dict[str, int],
    status: list[str],
) -> None:
    """Original as a light bar behind, kept as a thinner bar coloured by its status, the kept
    count after it, and the floor as a dashed tick across each bar."""
    colour = {"ok": OK, "at floor": AT_FLOOR, "collapsed": COLLAPSED}
    y = range(len(names))
    ax.barh(y, [original[n] for n in names], height=0.8, color="0.88", label="original width")
    bars = ax.barh(y, [kept[n] for n in names], height=0.55, color=[colour[s] for s in status])
    ax.vlines(
        [floors[n] for n in names],
        [i - 0.4 for i in y],
        [i + 0.4 for i in y],
        colors="k",
        linestyles="--",
        linewidth=1.0,
        label="floor (min channels kept)",
    )
    for bar, n, s in zip(bars, names, status, strict=True):
        ax.annotate(
            str(kept[n]),
            (kept[n], bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=7,
            color=COLLAPSED if s == "collapsed" else "k",
            fontweight="bold" if s == "collapsed" else "normal",
        )
    for key, text in (
        ("ok", "kept"),
        ("at floor", "kept, held up by the floor"),
        ("collapsed", f"kept, collapsed (< {COLLAPSE:.0%} of original)"),
    ):
        if key in status:  # a legend entry only for what is drawn
            ax.barh([0], [0], color=colour[key], label=text)


def _group_brackets(ax: Any, names: list[str], groups: Sequence[Sequence[str]]) -> int:
    """Each coupled group: a coloured bracket right of the axes from its first to its last layer,
    a dot at every member (members need not be adjacent: a residual stage's second convs
    alternate with the first ones), the members' rows tinted, and its name (G1, ...) at the top."""
    from matplotlib.transforms import blended_transform_factory

    row = {n: i for i, n in enumerate(names)}
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    drawn = [g for g in groups if len([n for n in g if n in row]) > 1]
    for k, group in enumerate(drawn):
        members = sorted(row[n] for n in group if n in row)
        colour = GROUP_COLOURS[k % len(GROUP_COLOURS)]
        x = 1.02 + 0.025 * (k % 4)  # neighbouring groups' brackets side by side
        style = {"transform": trans, "clip_on": False, "color": colour}
        ax.plot([x, x], [members[0], members[-1]], lw=1.5, **style)
        ax.plot([x] * len(members), members, "o", ms=3, **style)
        for i in members:
            ax.axhspan(i - 0.5, i + 0.5, color=colour, alpha=0.10, lw=0)
        ax.text(x, members[0] - 0.6, f"G{k + 1}", fontsize=7, ha="center", va="bottom", **style)
        ax.plot(
            [], [], lw=3, color=colour, label=f"G{k + 1}: {len(members)} layers pruned together"
        )
    return len(drawn)


def _log2_x(ax: Any, top: int) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = [2**k for k in range(0, max(1, top).bit_length() + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlim(0.8, top * 2.2)  # room for the number after the widest bar


# -- accuracy through the schedule --------------------------------------------------------------


# what a trial logs per stage (MLflow step = stage) that a StagePoint is made of
STAGE_KEYS = ("val_acc", "val_acc_after_prune", "epochs", "epochs_used", "speedup")
# logged since BN recalibration exists; a stage without them has no recalibrated point
RECAL_KEYS = ("val_acc_after_recal", "bn_recal_images")


@dataclass(frozen=True)
class StagePoint:
    stage: int
    speedup: float  # reached by this stage's prune
    epochs_before: float  # cumulative epochs when the stage pruned (sparse training included)
    epochs_after: float  # ... after its fine-tune
    acc_after_prune: float  # raw, with the BN statistics of before the prune
    acc: float  # after the fine-tune
    acc_after_recal: float | None = None  # after BN recalibration; None: not recalibrated


def stage_points(history: dict[str, dict[int, float]]) -> list[StagePoint]:
    """From per-stage metric histories (metric -> step -> value, step = stage)."""
    steps = sorted(set.intersection(*(set(history.get(k, {})) for k in STAGE_KEYS)))
    recal, images = history.get(RECAL_KEYS[0], {}), history.get(RECAL_KEYS[1], {})
    return [
        StagePoint(
            stage=s,
            speedup=history["speedup"][s],
            epochs_before=history["epochs_used"][s] - history["epochs"][s],
            epochs_after=history["epochs_used"][s],
            acc_after_prune=history["val_acc_after_prune"][s],
            acc=history["val_acc"][s],
            acc_after_recal=recal[s] if s in recal and images.get(s, 0) > 0 else None,
        )
        for s in steps
    ]


def sawtooth(points: Sequence[StagePoint], base_acc: float | None) -> tuple[list, list]:
    """(epochs, accuracy) through the schedule: each prune drops, a recalibration (same epoch)
    climbs straight up to the honest value, each fine-tune climbs."""
    xs, ys = ([0.0], [base_acc]) if base_acc is not None else ([], [])
    for p in points:
        xs.append(p.epochs_before)
        ys.append(p.acc_after_prune)
        if p.acc_after_recal is not None:
            xs.append(p.epochs_before)
            ys.append(p.acc_after_recal)
        xs.append(p.epochs_after)
        ys.append(p.acc)
    return xs, _pct(ys)


def plot_schedule_accuracy(
    curves: dict[str, Sequence[StagePoint]],
    path: Path,
    title: str,
    base_acc: float | None = None,
) -> Path:
    """One sawtooth per trial (label -> its stages). With one trial the values are written at
    the points and the top axis names the speed-up each prune reached."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if base_acc is not None:
        ax.axhline(100 * base_acc, color="0.4", ls=":", lw=1.2, label=f"baseline {base_acc:.1%}")
    for i, (label, points) in enumerate(curves.items()):
        _draw_curve(ax, points, base_acc, f"C{i % 10}", label)
    if len(curves) == 1:
        (points,) = curves.values()
        _label_values(ax, points)
        _prune_axis(ax, points)
    ax.scatter([], [], marker="v", c="w", edgecolors="k", label="right after a prune (raw)")
    if any(p.acc_after_recal is not None for points in curves.values() for p in points):
        ax.scatter([], [], marker="D", c="w", edgecolors="k", label="after BN recalibration")
    ax.scatter([], [], marker="o", c="w", edgecolors="k", label="after its fine-tune")
    ax.set_xlabel("cumulative fine-tune epochs (sparse training included)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    _integer_x(ax)
    top = max([max(sawtooth(p, base_acc)[1], default=0.0) for p in curves.values()], default=1)
    # room above for the value labels; markers at 0-1% (a collapsed prune) are drawn unclipped
    ax.set_ylim(0, top + max(3.0, 0.08 * top))
    ax.margins(x=0.07)  # room for the value labels of the last points
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
    return save(fig, path)


def _draw_curve(
    ax: Any, points: Sequence[StagePoint], base_acc: float | None, colour: str, label: str
) -> None:
    xs, ys = sawtooth(points, base_acc)
    ax.plot(xs, ys, "-", color=colour, lw=1.5, label=label)
    style = {"color": colour, "edgecolors": "k", "linewidths": 0.5, "zorder": 3, "clip_on": False}
    pruned = [(p.epochs_before, 100 * p.acc_after_prune) for p in points]
    recal = [
        (p.epochs_before, 100 * p.acc_after_recal) for p in points if p.acc_after_recal is not None
    ]
    tuned = [(p.epochs_after, 100 * p.acc) for p in points]
    for marks, marker, size in ((pruned, "v", 45), (recal, "D", 30), (tuned, "o", 35)):
        if marks:
            ax.scatter(*zip(*marks, strict=True), marker=marker, s=size, **style)


def _label_values(ax: Any, points: Sequence[StagePoint]) -> None:
    """Accuracy next to each point; a 0-epoch stage puts points on top of each other, and only
    the first of those gets a label."""
    seen: list[tuple[float, float]] = []
    for p in points:
        marks = [(p.epochs_before, p.acc_after_prune, -12), (p.epochs_after, p.acc, 5)]
        if p.acc_after_recal is not None:
            marks.insert(1, (p.epochs_before, p.acc_after_recal, 5))
        for x, acc, dy in marks:
            if any(abs(x - sx) < 0.05 and abs(acc - sa) < 0.03 for sx, sa in seen):
                continue
            seen.append((x, acc))
            ax.annotate(
                f"{acc:.1%}",
                (x, 100 * acc),
                xytext=(4, dy),
                textcoords="offset points",
                fontsize=7,
                color="0.2",
            )


def _prune_axis(ax: Any, points: Sequence[StagePoint]) -> None:
    """Top axis: where each prune happened and the speed-up it reached (prunes at the same epoch,
    after 0-epoch stages, share one tick)."""
    at: dict[float, list[str]] = {}
    for p in points:
        at.setdefault(p.epochs_before, []).append(f"{p.speedup:.2f}x")
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(at), ["\u2192".join(v) for v in at.values()], fontsize=7)
    top.set_xlabel("pruned to (MACs speed-up)", fontsize=8)
    for x in at:
        ax.axvline(x, color="0.8", lw=0.8, zorder=0)
