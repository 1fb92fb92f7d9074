"""report.html: a search as one self-contained HTML page: config, search space, Pareto table,
plots, the chosen schedule and links to the MLflow runs. Pure: data in, text out; every piece of
text is escaped, images are embedded as data URIs and nothing is fetched from elsewhere."""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

from search.accounting import format_wall
from search.trials import trial_count

if TYPE_CHECKING:
    from search.report.data import Figure, ReportData
    from search.trials import TrialRow

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12.5px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3em .6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.front td { background: #fff3f0; } tr.pick td { font-weight: bold; }
tr.unusable td { color: #888; }
.badge { font-size: 11px; padding: 0 .4em; border-radius: 3px; margin-left: .3em;
         background: #444; color: #fff; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
"""


def run_link(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI; only a tracking server has one to link to."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def build_html(data: ReportData) -> str:
    title = f"prunetune search report: {data.experiment}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        _summary(data),
        _section("Pareto front", _table(data)),
        _section("What mattered", _what_mattered(data)),
        _section("Plots", "".join(_figure(f) for f in data.figures) or "<p>No plots.</p>"),
        _section(_schedule_title(data), _schedule(data)),
        _section("MLflow runs", _runs(data)),
        _section("Experiment config", f"<pre>{esc(data.config_yaml)}</pre>"),
        _section("Search space", _space(data.search_space)),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _what_mattered(data: ReportData) -> str:
    """The parameters that drove validation accuracy (search.importance: PED-ANOVA)."""
    if not data.what_mattered:
        return "<p>Not computed for this search (it ran before prunetune did this).</p>"
    items = "".join(f"<li>{esc(line)}</li>" for line in data.what_mattered)
    return (
        f"<ul>{items}</ul><p>Optuna's PED-ANOVA on the trials that finished their schedule, "
        "against validation accuracy: how differently each parameter sits in the best 30% of "
        "them than in all.</p>"
    )


def _section(title: str, body: str) -> str:
    return f"<h2>{esc(title)}</h2>\n{body}"


def _summary(data: ReportData) -> str:
    usable = [r for r in data.rows if r.usable]
    items = [f"model: {data.model}"] if data.model else []
    items += [
        f"{trial_count(data.rows)} trials{_run_count(data.rows)}, {len(usable)} completed their "
        "schedule, "
        f"{len(data.front_ids)} on the Pareto front of validation accuracy (max) against "
        + " and ".join(f"{o.axis(data.cost)} (min)" for o in data.objectives if o.mode == "min"),
    ]
    wall = f" in {format_wall(data.wall_s)} of wall time" if data.wall_s is not None else ""
    items.append(
        f"search compute: {data.cost.format(data.search_cost)} over all trials (stopped early "
        f"and failed ones with what they computed){wall}"
    )
    if data.base_acc is not None:
        items.append(f"baseline (unpruned) validation accuracy {data.base_acc:.2%}")
    if data.pick is not None:
        p = data.pick
        items.append(
            f"chosen by {data.pick_how}: trial {p.trial_id}, {p.val_acc:.2%} at "
            f"{p.speedup:.2f}x MACs speed-up{_measured(p)} for {data.cost.format(p.cost)} "
            f"({p.train_tmacs:.4g} TMACs of fine-tune compute, {p.epochs_used:g} epochs)"
        )
    else:
        items.append("no trial completed its schedule: nothing to choose")
    items.append(f"MLflow: {data.tracking_uri}, parent run {data.parent_run_id}")
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def _run_count(rows: list[TrialRow]) -> str:
    """' (7 MLflow runs: 3 continued in a later run)' when trials have more than one run."""
    continued = sum(1 for r in rows if r.continued)
    if not continued:
        return ""
    return f" ({len(rows)} MLflow runs: {continued} continued in a later run of their trial)"


def _measured(r: TrialRow) -> str:
    """', 2.10x measured (3.41 ms)' beside the MACs speed-up, or '' when not measured."""
    if r.latency_speedup != r.latency_speedup:  # NaN: the search measured no latency
        return ""
    return f", {r.latency_speedup:.2f}x measured ({r.latency_ms:.3g} ms per batch)"


COLUMNS = (
    ("trial", "text"),
    ("val acc", ""),
    ("compute (TMACs)", ""),
    ("epochs", ""),
    ("MACs speed-up", ""),
    ("latency", ""),
    ("measured speed-up", ""),
    ("MACs", ""),
    ("params", ""),
    ("train time", ""),
    ("status", "text"),
    ("schedule", "text"),
    ("MLflow run", "text"),
)


def _ordered(data: ReportData) -> list[TrialRow]:
    """The front by cost first, then the other completed trials, then failed/stopped ones."""
    rank = {True: 0, False: 1}
    return sorted(
        data.rows,
        key=lambda r: (rank[r.run_id in data.front_ids], rank[r.usable], r.cost, r.trial_id),
    )


def _table(data: ReportData) -> str:
    head = "".join(f'<th class="{css}">{esc(name)}</th>' for name, css in COLUMNS)
    body = "\n".join(_row(data, r) for r in _ordered(data))
    note = (
        "<p>Shaded rows are on the front; grey rows did not complete their schedule (failed, "
        "stopped early, or continued in a later run of the same trial: a retry, a resumed "
        "search, a PBT trial paused at a stage boundary) and never count.</p>"
    )
    return f"{note}<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _row(data: ReportData, r: TrialRow) -> str:
    classes = []
    badges = ""
    if r.run_id in data.front_ids:
        classes.append("front")
        badges += _badge("front")
    if data.pick is not None and r.run_id == data.pick.run_id:
        classes.append("pick")
        badges += _badge(data.pick_how)
    if r.reference:
        badges += _badge("reference")
    if not r.usable:
        classes.append("unusable")
    cells = [
        f'<td class="text">{esc(r.trial_id)}{badges}</td>',
        f"<td>{esc(_num(r.val_acc, '{:.2%}'))}</td>",
        f"<td>{esc(_num(r.train_tmacs, '{:.4g}'))}</td>",
        f"<td>{esc(_num(r.epochs_used, '{:g}'))}</td>",
        f"<td>{esc(_num(r.speedup, '{:.2f}x'))}</td>",
        f"<td>{esc(_num(r.latency_ms, '{:.3g} ms'))}</td>",
        f"<td>{esc(_num(r.latency_speedup, '{:.2f}x'))}</td>",
        f"<td>{esc(_num(r.macs / 1e6, '{:.2f}M'))}</td>",
        f"<td>{esc(_num(r.params / 1e6, '{:.3f}M'))}</td>",
        f"<td>{esc(_num(r.train_seconds, '{:.0f} s'))}</td>",
        f'<td class="text">{esc(r.state)}</td>',
        f'<td class="text">{esc(_arrows(r.schedule))}</td>',
        f'<td class="text">{_run_cell(data, r.run_id)}</td>',
    ]
    return f'<tr class="{" ".join(classes)}">' + "".join(cells) + "</tr>"


def _arrows(schedule: str) -> str:
    return schedule.replace(" -> ", " \u2192 ")  # an arrow a table cell cannot break in two


def _badge(text: str) -> str:
    return f'<span class="badge">{esc(text)}</span>'


def _num(value: float, fmt: str) -> str:
    return "-" if value != value else fmt.format(value)  # NaN: the trial never reported it


def _run_cell(data: ReportData, run_id: str) -> str:
    link = run_link(data.tracking_uri, data.experiment_id, run_id)
    if link is None:
        return f"<code>{esc(run_id)}</code>"
    return f'<a href="{esc(link)}"><code>{esc(run_id)}</code></a>'


def _figure(f: Figure) -> str:
    encoded = base64.b64encode(f.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(f.caption)}">'
        f"<figcaption>{esc(f.caption)}</figcaption></figure>"
    )


def _schedule_title(data: ReportData) -> str:
    if data.pick is None:
        return "Chosen schedule"
    return f"Chosen schedule ({data.pick_how}: trial {data.pick.trial_id})"


def _schedule(data: ReportData) -> str:
    if not data.schedule_yaml:
        return "<p>No trial completed its schedule.</p>"
    return (
        "<p>The schedule file as exported; replay it with "
        "<code>prunetune replay schedule.yaml</code>.</p>"
        f"<pre>{esc(data.schedule_yaml)}</pre>"
    )


def _runs(data: ReportData) -> str:
    parent = _run_cell(data, data.parent_run_id)
    lines = [
        f"<p>Parent run of the search: {parent} (experiment id {esc(data.experiment_id)}).</p>"
    ]
    if run_link(data.tracking_uri, data.experiment_id, data.parent_run_id) is None:
        lines.append(
            "<p>The tracking store is local, so the run ids above are not links. Open the MLflow "
            f"UI on it with:</p><pre>{esc(data.ui_command)}</pre>"
        )
    else:
        lines.append("<p>Every run id in the table links to its page in the MLflow UI.</p>")
    return "\n".join(lines)


def _space(space: dict[str, str]) -> str:
    if not space:
        return "<p>Not recorded.</p>"
    rows = "".join(
        f'<tr><td class="text"><code>{esc(k)}</code></td><td class="text">{esc(v)}</td></tr>'
        for k, v in space.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"
