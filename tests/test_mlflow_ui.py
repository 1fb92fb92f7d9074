"""The MLflow UI as a user sees it, in a real headless Chromium driven by Playwright.

A tiny search runs against a real `mlflow server` on 127.0.0.1 (`prunetune search --mlflow-uri`,
then `prunetune pareto`), then the browser opens the experiment: the parent run is listed, its
trials appear nested under it once expanded, the run page names them as child runs, and the
parent's Artifacts tab renders `pareto.png` (the image loads, at the size MLflow stores).
`prunetune export --register` then makes a trial's model a version in the Model Registry, and
the Models page lists it with that version.
Screenshots go to the test's tmp folder and to `runs/test-artifacts/mlflow_ui/`.

The browser is Debian's `chromium` (or `PRUNETUNE_CHROMIUM=/path/to/chrome`); Playwright's own
browser downloads are never used. Without a browser the tests skip, unless
`PRUNETUNE_REQUIRE_BROWSER=1` (set by `.ci/run`), where they fail.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment
from support.procs import ROOT

ARTEFACTS = ROOT / "runs" / "test-artifacts" / "mlflow_ui"
pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
# Cosmetic only (the checks pass without it): MLflow 3's "Model training" view rather than its
# GenAI view, and its assistant side panel closed, so screenshots show the runs.
QUIET_UI = """
try {
  localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
} catch (e) {}
"""
UI_TIMEOUT_MS = 60_000  # the first load of the UI bundle is slow on a busy 2-core machine

EXPERIMENT = tiny_experiment(
    "ui-check",
    target_speedup=2.0,
    width=0.0625,
    data={"samples": 200, "val_size": 0.25},
    space={"max_stages": 1, "total_epochs": [1]},
    training={"batch_size": 50},
    num_trials=2,
    resources={"cpu": 1},
)
REGISTERED = "ui-check-model"  # the name `prunetune export --register` gives the picked model


def find_chromium() -> str | None:
    return os.environ.get("PRUNETUNE_CHROMIUM") or shutil.which("chromium")


def missing(reason: str) -> None:
    """Skip, or fail where CI requires the browser test to run."""
    if os.environ.get("PRUNETUNE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (PRUNETUNE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")  # session: checked before the session's Ray and MLflow start
def chromium() -> str:
    path = find_chromium()
    if not path or not Path(path).is_file():
        missing(
            "no Chromium for the MLflow UI test: install Debian's `chromium` "
            "(sudo apt-get install -y --no-install-recommends chromium) "
            "or set PRUNETUNE_CHROMIUM=/path/to/chromium"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("Playwright is not installed: pip install '.[dev]' (or pip install playwright)")
    return str(path)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@dataclass
class Searched:
    uri: str
    experiment_id: str
    parent_id: str
    parent_name: str
    children: dict[str, str]  # run id -> run name
    pareto_png: bytes
    registered_version: str  # of REGISTERED


@pytest.fixture(scope="module")
def searched(chromium, ray_cluster, mlflow_server, tmp_path_factory) -> Searched:
    """`prunetune search ... --mlflow-uri` then `prunetune pareto`, through the command line's
    entry point in this process (on the session's Ray cluster, as tests/test_search_e2e.py)."""
    from search.cli import main

    out = tmp_path_factory.mktemp("ui_search")
    config = out / "ui-check.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(out / "run")}))
    assert main(["search", str(config), "--mlflow-uri", mlflow_server]) == 0
    assert main(["pareto", "ui-check", "--mlflow-uri", mlflow_server]) == 0
    export = ["export", "ui-check", "--mlflow-uri", mlflow_server, "--out", str(out / "export")]
    assert main([*export, "--register", REGISTERED]) == 0

    client = MlflowClient(mlflow_server)  # what the UI must show, read over the REST API
    experiment = client.get_experiment_by_name("ui-check")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("prunetune.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("prunetune.role") == "trial"]
    assert len(trials) == 2
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    png = client.download_artifacts(parent.info.run_id, "pareto.png", str(out / "dl"))
    return Searched(
        uri=mlflow_server,
        experiment_id=experiment.experiment_id,
        parent_id=parent.info.run_id,
        parent_name=parent.info.run_name,
        children={t.info.run_id: t.info.run_name for t in trials},
        pareto_png=Path(png).read_bytes(),
        registered_version=client.search_model_versions(f"name = '{REGISTERED}'")[0].version,
    )


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield chrome
        finally:
            chrome.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow_ui_screenshots")


class UI:
    """One browser page, with named steps that save a screenshot when they fail."""

    def __init__(self, page, folder: Path, test: str) -> None:
        self.page, self.folder, self.test = page, folder, test

    def save(self, name: str) -> Path:
        """A screenshot in the test's tmp folder, copied to runs/test-artifacts/mlflow_ui/."""
        path = self.folder / name
        self.page.screenshot(path=str(path))
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTEFACTS / name)
        return path

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            self.save(f"{self.test}-failed.png")  # what the browser showed
            if isinstance(e, AssertionError):
                raise AssertionError(f"MLflow UI, {what}: {e}") from e
            raise


@pytest.fixture
def ui(browser, screenshots, request) -> Iterator[UI]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(QUIET_UI)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield UI(page, screenshots, request.node.name)
    finally:
        context.close()


def test_parent_run_lists_its_trials_as_child_runs(searched: Searched, ui: UI) -> None:
    from playwright.sync_api import expect

    s, page = searched, ui.page
    parent = page.locator(f'a[href$="/runs/{s.parent_id}"]')
    children = {rid: page.locator(f'a[href$="/runs/{rid}"]') for rid in s.children}
    with ui.step(f"the experiment's runs list the parent run {s.parent_name}"):
        page.goto(f"{s.uri}/#/experiments/{s.experiment_id}/runs")
        expect(parent).to_have_text(s.parent_name)
    with ui.step("the trials are nested under the collapsed parent, hidden"):
        for link in children.values():
            expect(link).to_have_count(0)
    with ui.step("expanding the parent lists its trials"):
        # the expand (+) button sits in the parent's name cell
        page.get_by_role("gridcell").filter(has=parent).get_by_role("button").click()
        for rid, name in s.children.items():
            expect(children[rid]).to_have_text(name)
    ui.save("runs_expanded.png")

    with ui.step("the parent run's page names its trials as child runs"):
        parent.click()
        expect(page.get_by_role("heading", name=s.parent_name)).to_be_visible()
        expect(page.get_by_test_id("key-value-Run ID")).to_contain_text(s.parent_id)
        listed = page.get_by_test_id("key-value-Child runs")
        for rid, name in s.children.items():
            expect(listed.locator(f'a[href$="/runs/{rid}"]')).to_have_text(name)
    ui.save("parent_run.png")


def test_pareto_plot_is_shown_on_the_parent_run(searched: Searched, ui: UI) -> None:
    from playwright.sync_api import expect

    s, page = searched, ui.page
    with ui.step("the parent run's Artifacts tab lists pareto.png"):
        page.goto(f"{s.uri}/#/experiments/{s.experiment_id}/runs/{s.parent_id}")
        page.get_by_role("tab", name="Artifacts").click()
        tree = page.get_by_test_id("artifact-tree-node")
        for name in ("experiment.yaml", "pareto.json", "pareto.txt", "pareto.png"):
            expect(tree.and_(page.locator(f'[artifact-name="{name}"]'))).to_be_visible()
    with ui.step("opening pareto.png renders the image MLflow stores"):
        tree.and_(page.locator('[artifact-name="pareto.png"]')).click()
        image = page.get_by_role("img", name="pareto.png")
        expect(image).to_be_visible()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        shown = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert tuple(shown) == png_size(s.pareto_png), f"{shown} is not pareto.png's size"
    ui.save("parent_pareto.png")


def test_registered_model_is_on_the_models_page(searched: Searched, ui: UI) -> None:
    from playwright.sync_api import expect

    s, page = searched, ui.page
    # MLflow 3 announces its new registry UI in a dialog over the page, when it likes: closed
    promo = page.get_by_role("dialog")
    page.add_locator_handler(promo, lambda: promo.get_by_label("Close").click())
    link = page.locator(f'a[href$="/models/{REGISTERED}"]')
    with ui.step(f"the Models page lists {REGISTERED}"):
        page.goto(f"{s.uri}/#/models")
        expect(link.first).to_have_text(REGISTERED)
    ui.save("models_page.png")
    with ui.step(f"its page lists version {s.registered_version}"):
        link.first.click()
        version = page.locator(f'a[href$="/models/{REGISTERED}/versions/{s.registered_version}"]')
        expect(version.first).to_be_visible()
    ui.save("registered_model.png")
