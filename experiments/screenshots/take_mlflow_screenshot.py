"""Screenshot of a search's Pareto front as the MLflow UI shows it (the parent run's pareto.png).

    make demo
    python experiments/screenshots/take_mlflow_screenshot.py            # from runs/demo
    python experiments/screenshots/take_mlflow_screenshot.py --mlflow-uri http://127.0.0.1:5000 \
        --experiment vgg19-cifar100-8x                                  # from a running server

With a store folder (`--store`, default `runs/demo`), a copy of its `mlflow.db` is served by a
temporary `mlflow server` on 127.0.0.1 (the folder itself is only read). The page of the latest
search's parent run, Artifacts tab, pareto.png, is opened in headless Chromium (Debian's
`chromium`, or `PRUNETUNE_CHROMIUM`) through Playwright and saved as a 1280x800 PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
QUIET_UI = """
try {
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
} catch (e) {}
"""


@contextmanager
def served(store: Path) -> Iterator[str]:
    """A temporary `mlflow server` on a copy of STORE/mlflow.db; stopped on exit."""
    db = store / "mlflow.db"
    if not db.is_file():
        sys.exit(f"no {db}: run `make demo` first, or pass --store or --mlflow-uri")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(db, Path(tmp) / "mlflow.db")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "1"]
        argv += ["--backend-store-uri", f"sqlite:///{tmp}/mlflow.db"]
        argv += ["--artifacts-destination", f"{tmp}/artifacts"]
        proc = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        sys.exit("the temporary mlflow server did not start")
                    time.sleep(0.5)
            yield uri
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def latest_parent(uri: str, experiment: str) -> tuple[str, str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"no MLflow experiment {experiment!r} at {uri}")
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`prunetune.role` = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        sys.exit(f"no search in the experiment {experiment!r}")
    return exp.experiment_id, runs[0].info.run_id


def screenshot(uri: str, experiment_id: str, run_id: str, chromium: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(QUIET_UI)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{run_id}")
            page.get_by_role("tab", name="Artifacts").click()
            page.locator('[data-testid="artifact-tree-node"][artifact-name="pareto.png"]').click()
            image = page.get_by_role("img", name="pareto.png")
            expect(image).to_be_visible(timeout=60_000)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
            )
            page.mouse.move(0, 799)  # no hover highlight in the picture
            page.screenshot(path=str(out))
        finally:
            browser.close()
    # a 256-colour palette keeps the committed PNG small; the UI is flat colours anyway
    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--mlflow-uri", help="a running tracking server instead of --store")
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("mlflow_pareto.png"))
    args = parser.parse_args()
    chromium = os.environ.get("PRUNETUNE_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        sys.exit("no chromium: sudo apt-get install -y chromium, or set PRUNETUNE_CHROMIUM")
    with served(args.store) if not args.mlflow_uri else _given(args.mlflow_uri) as uri:
        experiment_id, run_id = latest_parent(uri, args.experiment)
        screenshot(uri, experiment_id, run_id, chromium, args.out)
    print(f"{args.out} ({args.experiment}, parent run {run_id})")


@contextmanager
def _given(uri: str) -> Iterator[str]:
    yield uri


if __name__ == "__main__":
    main()
