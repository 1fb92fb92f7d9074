"""The HTML report, built from plain data: no MLflow, no search."""

from __future__ import annotations

import base64
import dataclasses
from html.parser import HTMLParser

import pytest
from support.trial_rows import row

from search.report.data import Figure, ReportData
from search.report.html import build_html, run_link
from search.report.plots import plot_front

SCHEDULE = """format: prunetune.schedule
version: 1
schedule:
  target_speedup: 8.84
  stages:
  - {speedup: 8.84, epochs: 30, lr: 0.01, lr_schedule: step}
"""


class Links(HTMLParser):
    """Every src and href of the page, and the tags in the order they open and close."""

    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        for key, value in attrs:
            if key == "src":
                self.src.append(value)
            elif key == "href":
                self.href.append(value)
        if tag not in ("meta", "img", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


def parse(page: str) -> Links:
    links = Links()
    links.feed(page)
    links.close()
    assert links.open == []  # every tag that opened was closed, in order
    return links


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("png") / "front.png"
    return plot_front([row(1, 0.6, 10)], [row(1, 0.6, 10)], path).read_bytes()


def data(png: bytes, uri: str = "sqlite:////tmp/x/mlflow.db", **changes) -> ReportData:
    rows = [
        row(0, 0.62, 40, reference=True),
        row(1, 0.66, 30),
        row(2, 0.55, 10),
        row(3, 0.30, 10, done=False),
    ]
    rows[2] = dataclasses.replace(rows[2], schedule="lamp/<script>alert(1)")
    base = ReportData(
        experiment="demo & co",
        tracking_uri=uri,
        experiment_id="7",
        parent_run_id="parent123",
        ui_command=f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
        config_yaml="name: demo\ntarget_speedup: 8.84\n",
        search_space={"n_stages": "integer in [1, 3]", "lr_0..2": "log-uniform in [0.002, 0.05]"},
        rows=rows,
        front_ids={"run1", "run2"},
        pick=rows[1],
        pick_how="knee",
        schedule_yaml=SCHEDULE,
        base_acc=0.735,
        figures=[Figure("the front", png), Figure("widths <of> the pick", png)],
    )
    return dataclasses.replace(base, **changes)


def test_report_has_table_plots_schedule_and_config(png: bytes) -> None:
    page = build_html(data(png))
    for trial in ("t0000", "t0001", "t0002", "t0003"):
        assert f'<td class="text">{trial}' in page
    assert page.count('<tr class="front') == 2
    assert '<tr class="front pick">' in page  # the knee is on the front and bold
    assert '<tr class="unusable">' in page  # the early-stopped trial, greyed
    table = page[page.index("<tbody>") :]  # front by cost, other completed, not completed
    assert table.index("t0002") < table.index("t0001") < table.index("t0000") < table.index("t0003")
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "format: prunetune.schedule" in page and "lr_schedule: step" in page
    assert "target_speedup: 8.84" in page and "log-uniform in [0.002, 0.05]" in page
    assert "73.50%" in page and "66.00%" in page
    assert "parent123" in page
    assert "3x/10ep@0.01 \u2192 8.84x/30ep@0.01" in page


def test_report_escapes_every_text(png: bytes) -> None:
    page = build_html(data(png))
    assert "<script>" not in page
    assert "lamp/&lt;script&gt;alert(1)" in page
    assert "demo &amp; co" in page and "widths &lt;of&gt; the pick" in page
    parse(page)


def test_local_store_shows_run_ids_and_the_ui_command_without_links(png: bytes) -> None:
    page = build_html(data(png))
    links = parse(page)
    assert links.href == []
    assert all(s.startswith("data:image/png;base64,") for s in links.src) and len(links.src) == 2
    assert "<code>run1</code>" in page
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db" in page


def test_tracking_server_runs_are_links_and_nothing_else_is_fetched(png: bytes) -> None:
    page = build_html(data(png, uri="http://mlflow.example:5000/"))
    links = parse(page)
    runs = {"parent123", "run0", "run1", "run2", "run3"}
    assert set(links.href) == {f"http://mlflow.example:5000/#/experiments/7/runs/{r}" for r in runs}
    assert all(s.startswith("data:image/png;base64,") for s in links.src)
    assert "@import" not in page and "url(" not in page  # no external CSS either


def test_report_without_a_completed_trial(png: bytes) -> None:
    page = build_html(data(png, pick=None, schedule_yaml="", front_ids=set(), figures=[]))
    assert "nothing to choose" in page and "No trial completed its schedule" in page
    assert "<img" not in page
    parse(page)


def test_a_trials_continued_runs_count_once_and_say_so(png: bytes) -> None:
    # trial t0001's first run paused at a stage boundary (PBT) and its second finished
    paused = dataclasses.replace(row(1, 0.40, 5, done=False), run_id="run1a", continued=True)
    rows = [row(0, 0.62, 40), paused, row(1, 0.66, 30)]
    page = build_html(data(png, rows=rows, pick=rows[2], front_ids={"run0", "run1"}))
    assert "2 trials (3 MLflow runs: 1 continued in a later run of their trial)" in page
    assert '<td class="text">continued</td>' in page and ">KILLED<" not in page
    parse(page)


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/#/experiments/3/runs/abc"),
        ("https://mlflow.example/", "https://mlflow.example/#/experiments/3/runs/abc"),
        ("sqlite:////tmp/mlflow.db", None),
        ("file:///tmp/mlruns", None),
        ("databricks", None),
    ],
)
def test_run_link(uri: str, expected: str | None) -> None:
    assert run_link(uri, "3", "abc") == expected


def test_figure_bytes_round_trip(png: bytes) -> None:
    page = build_html(data(png))
    encoded = page.split('<img src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == png


def test_report_shows_what_mattered_and_the_search_compute(png: bytes) -> None:
    line = "lr_0: 41% of the importance; the best trials used 0.011-0.019"
    page = build_html(data(png, what_mattered=(line,), search_cost=12.5, wall_s=125.0))
    assert "<h2>What mattered</h2>" in page and f"<li>{line}</li>" in page
    assert "search compute: 12.5 TMACs over all trials" in page and "2m05s of wall time" in page
    older = build_html(data(png))  # a search from before either was logged
    assert "Not computed for this search" in older


@pytest.mark.parametrize(
    ("logged", "same_unit", "expected"),
    [
        (5.0, True, 5.0),  # the accounting's total: a PBT donor's prefix counted once
        (5.0, False, 3.0),  # a report in another unit than the search's: the trials' own
        (None, True, 3.0),  # a search from before the accounting
    ],
)
def test_the_reports_search_compute_is_the_accountings_in_the_searchs_unit(
    logged: float | None, same_unit: bool, expected: float
) -> None:
    from search.report.data import _spent

    rows = [row(1, 0.5, 1.0), row(2, 0.6, 2.0)]
    parent = {} if logged is None else {"search_cost": logged}
    assert _spent(parent, rows, same_unit) == pytest.approx(expected)
