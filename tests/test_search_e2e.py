"""A real search: local Ray cluster, sqlite MLflow, tiny VGG19 and generated data."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment
from support.mlflow_server import runs_by_role
from support.procs import free_port

from pruning.compute import COSTS
from pruning.models import load_pruned
from search.accounting import per_trial_cost
from search.cli import main
from search.trials import rows_from_runs

pytestmark = pytest.mark.usefixtures("ray_cluster")
# the front against cost and against latency (three objectives), MACs vs. measured speed-up
PLOTS = (
    "pareto.png",
    "pareto_latency.png",
    "speedups.png",
    "widths.png",
    "accuracy.png",
    "accuracy_front.png",
)
# A distillation temperature so small that logits / T overflow float32: the loss is NaN in the
# first fine-tune epoch, every time. (An LR of 10, the most the space allows, does not do it on
# this BatchNorm network: the loss peaks near 2e8 and stays finite.)
OVERFLOWING_T = 1e-39

EXPERIMENT = tiny_experiment(
    "e2e",
    target_speedup=3.9,
    data={"samples": 600},
    baseline={"pretrain_epochs": 2},
    # A floor the target cannot reach is refused before any compute (test_trial_point.py); 0.3
    # lets this model reach 7.9x.
    space={
        "min_channel_ratios": [0.0, 0.3],
        "distill_alphas": [0.0, 0.5],
        "distill_temperatures": [4.0, OVERFLOWING_T],
    },
    points=[
        {"min_channel_ratio": 0.3},
        # two stages, all epochs in the second: ASHA has no rung to stop it at
        {"n_stages": 2, "total_epochs": 2, "epochs_0": 0.2, "epochs_1": 1.0},
        # a valid point whose loss turns non-finite in its first epoch: it fails inside Ray
        # (NonFiniteLossError), alone
        {"distill_alpha": 0.5, "distill_temperature": OVERFLOWING_T},
    ],
    num_trials=5,  # the reference, the three points and one the sampler draws
    # Early stopping on: a trial ASHA stops must never count as a finished schedule.
    asha={"enabled": True, "grace_epochs": 1, "reduction_factor": 2},
    # Each finished trial logs its MLflow model; pytorch only (the onnx flavour costs 3-10 s more
    # a trial: tests/test_mlflow_models.py logs it)
    mlflow={"log_models": ["pytorch"]},
    # Ranked by all three objectives; each trial times its models with the default latency
    # settings (batch 1 and 64, 5 warm-up and 20 timed runs: well under a second here).
    objectives=["val_acc", "cost", "latency"],
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    config = out / "e2e.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(out / "run")}))
    assert main(["search", str(config)]) == 0
    uri = f"sqlite:///{out / 'run' / 'mlflow.db'}"
    return config, uri, out


def runs(uri: str) -> tuple[list, list]:
    return runs_by_role(uri, "e2e", "search"), runs_by_role(uri, "e2e", "trial")


def test_parent_and_child_runs(searched) -> None:
    _, uri, _ = searched
    parents, trials = runs(uri)
    assert len(parents) == 1 and len(trials) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {"git_commit", "version.torch", "version.ray"} <= set(parent.data.tags)
    assert parent.data.params["target_speedup"] == "3.9"
    assert yaml.safe_load(parent.data.params["objectives"]) == ["val_acc", "cost", "latency"]
    files = {f.path for f in MlflowClient(uri).list_artifacts(parent.info.run_id)}
    assert {"experiment.yaml", "search_space.json", "pareto.json", "pareto.png"} <= files
    assert set(PLOTS) | {"report.html"} <= files
    # the baseline was pretrained here, so its accuracy starts the accuracy-through-schedule plots
    assert 0.0 < parent.data.metrics["base_val_acc"] <= 1.0
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert all({"node", "device"} <= set(t.data.tags) for t in trials)


def _diverging(trial) -> bool:
    """Distils at the overflowing temperature: the injected point, and any drawn trial that
    happens to land on the same values (the sampler may; the assertions hold either way)."""
    params = trial.data.params
    distils = float(params["point.distill_alpha"]) > 0
    return distils and float(params["point.distill_temperature"]) == OVERFLOWING_T


def test_failed_trial_is_failed_in_mlflow_and_the_rest_complete(searched) -> None:
    _, uri, _ = searched
    _, trials = runs(uri)
    failed = [t for t in trials if _diverging(t)]
    assert failed  # the injected point at least
    for t in failed:
        assert t.info.status == "FAILED"
        assert "NonFiniteLossError: training loss became nan" in t.data.tags["error"]
    others = [t for t in trials if not _diverging(t)]
    floored = [t for t in others if t.data.params["min_channel_ratio"] == "0.3"]
    unfloored = [t for t in others if t.data.params["min_channel_ratio"] == "0.0"]
    assert floored and len(unfloored) >= 1  # the injected point and the reference
    for t in others:
        if t.data.tags.get("stopped_early") == "true":
            assert t.info.status == "KILLED" and t.data.metrics["completed"] == 0.0
        else:
            assert t.info.status == "FINISHED" and t.data.metrics["completed"] == 1.0


def test_per_stage_metrics_and_artifacts(searched) -> None:
    _, uri, _ = searched
    client = MlflowClient(uri)
    _, trials = runs(uri)
    two_stage = [
        t for t in trials if t.data.params.get("n_stages") == "2" and t.info.status == "FINISHED"
    ]
    assert two_stage
    history = client.get_metric_history(two_stage[0].info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]
    speedups = client.get_metric_history(two_stage[0].info.run_id, "speedup")
    assert max(m.value for m in speedups) == pytest.approx(3.9, rel=0.01)
    files = {f.path for f in client.list_artifacts(two_stage[0].info.run_id, "final")}
    assert {"final/schedule.yaml", "final/pruned.pt", "final/widths.json"} <= files
    for key in ("val_acc_after_prune", "macs", "params", "epochs_used", "train_seconds"):
        assert key in two_stage[0].data.metrics
    # measured latency beside the MACs (issue 14): after every stage's prune, against the dense
    # model timed once in the same trial, at the primary batch (the first) and at each batch
    latency = client.get_metric_history(two_stage[0].info.run_id, "latency_ms")
    assert sorted(m.step for m in latency) == [1, 2] and all(m.value > 0 for m in latency)
    m = two_stage[0].data.metrics
    assert m["latency_speedup"] == m["latency_speedup_b1"] > 0
    assert m["latency_ms_b64"] > m["latency_ms_b1"] and m["dense_latency_ms_b64"] > 0
    assert "latency_iqr_ms_b64" in m


def test_pareto_reads_back_and_tags_the_front(searched, capsys) -> None:
    config, uri, _ = searched
    assert main(["pareto", str(config), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    assert front and all(r["completed"] and r["status"] == "FINISHED" for r in front)
    _, trials = runs(uri)
    tagged = {t.info.run_id for t in trials if t.data.tags.get("pareto") == "true"}
    assert tagged == {r["run_id"] for r in front}
    # the table lists the failed trial apart, with the last line of its error
    assert main(["pareto", str(config)]) == 0
    table = capsys.readouterr().out
    failed = [t for t in trials if _diverging(t)]
    assert f"{len(failed)} failed:" in table
    for t in failed:
        (line,) = [
            ln for ln in table.splitlines() if ln.startswith(t.data.tags["prunetune.trial_id"])
        ]
        assert "FAILED: " in line and "training loss became nan" in line


def test_export_then_replay_reproduces_the_trial(searched, capsys, tmp_path) -> None:
    config, _, _ = searched
    out = tmp_path / "export"
    assert main(["export", str(config), "--pick", "max-acc", "--out", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert {"schedule.yaml", "pruned.pt", "metrics.json", "report.md"} <= {
        p.name for p in out.iterdir()
    }
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    assert exported["trial_id"] in page
    assert html.escape((out / "schedule.yaml").read_text()) in page
    threads = torch.get_num_threads()
    try:
        replayed = _replay(out / "schedule.yaml", tmp_path / "replay", capsys)
    finally:
        torch.set_num_threads(threads)
    assert replayed["val_acc"] == pytest.approx(exported["val_acc"], abs=1e-9)
    assert replayed["macs"] == exported["macs"]
    assert exported["latency_speedup_b64"] > 0  # the trial's final metrics.json has every batch


def test_export_onnx_writes_a_verified_file_beside_the_others(searched, capsys, tmp_path) -> None:
    """`export --onnx` (issue 14): model.onnx checked with onnxruntime against torch on the val
    images of the data the exported schedule.yaml names, with its line in report.md."""
    config, _, _ = searched
    out = tmp_path / "export"
    argv = ["export", str(config), "--out", str(out), "--onnx", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)["onnx"]
    assert (out / "model.onnx").is_file() and not (out / "model.failed.onnx").exists()
    assert result["top1_mismatches"] == 0 and result["max_abs_logit_diff"] <= result["tolerance"]
    assert "val images of synthetic" in result["check_source"]
    assert "onnxruntime" in captured.err and "latency batch 1: torch" in captured.err
    assert "- ONNX: `model.onnx`" in (out / "report.md").read_text()


def test_report_is_one_self_contained_html_file(searched, capsys, tmp_path) -> None:
    config, uri, _ = searched
    out = tmp_path / "report"
    assert main(["report", str(config), "--out", str(out), "--pick", "max-acc"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert [p.name for p in out.iterdir()] == ["report.html"]  # the plots are inside it
    page = (out / "report.html").read_text()
    _, trials = runs(uri)
    for t in trials:  # every trial in the table, failed and stopped ones included
        assert t.data.tags["prunetune.trial_id"] in page and t.info.run_id in page
    chosen = re.search(r"chosen by max-acc: trial (\w+), ", page)
    assert chosen is not None
    finished = {t.data.tags["prunetune.trial_id"]: t for t in trials if t.info.status == "FINISHED"}
    best = max(t.data.metrics["val_acc"] for t in finished.values())
    assert finished[chosen[1]].data.metrics["val_acc"] == best
    assert page.count('<img src="data:image/png;base64,') == len(PLOTS)
    assert "format: prunetune.schedule" in page and "target_speedup: 3.9" in page
    assert "n_stages" in page  # the search space
    assert f"mlflow ui --backend-store-uri {uri}" in page
    assert 'src="http' not in page and 'href="http' not in page  # sqlite: nothing to link to


def test_report_on_a_folder_without_a_search_says_what_to_fix(searched, capsys, tmp_path) -> None:
    config, _, _ = searched
    assert main(["report", str(config), f"out={tmp_path / 'elsewhere'}"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow database at" in err and "overrides" in err and "Traceback" not in err


def test_finished_trials_log_their_model(searched) -> None:
    _, uri, _ = searched
    client = MlflowClient(uri)
    _, trials = runs(uri)
    finished = [t for t in trials if t.info.status == "FINISHED"]
    assert finished
    for t in finished:
        logged = client.get_logged_model(t.data.tags["prunetune.model_id"])
        assert logged.status == "READY" and logged.source_run_id == t.info.run_id
        assert logged.name == "model" and t.data.metrics["model_log_seconds"] > 0
        assert "prunetune.onnx_model_id" not in t.data.tags  # log_models: [pytorch]
    for t in trials:  # failed or stopped early: no model
        assert t.info.status == "FINISHED" or "prunetune.model_id" not in t.data.tags


def test_export_register_gives_a_model_pyfunc_runs_as_load_pruned(
    searched, capsys, tmp_path, monkeypatch
) -> None:
    config, uri, _ = searched
    out = tmp_path / "export"
    argv = ["export", str(config), "--pick", "max-acc", "--out", str(out), "--register", "e2e-vgg"]
    assert main([*argv, "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["registered"]["uri"] == "models:/e2e-vgg/1"
    assert not exported["registered"]["logged_now"]  # the trial's own logged model
    version = MlflowClient(uri).get_model_version("e2e-vgg", "1")
    (parent,), _ = runs(uri)
    assert version.run_id == exported["run_id"]
    assert version.tags["search.experiment"] == "e2e"
    assert version.tags["search.parent_run_id"] == parent.info.run_id
    assert float(version.tags["macs_speedup"]) == pytest.approx(exported["speedup"], abs=1e-4)
    assert float(version.tags["val_acc"]) == pytest.approx(exported["val_acc"], abs=1e-4)
    assert version.tags["schedule"] and version.tags["trial_id"] == exported["trial_id"]
    if exported.get("latency_speedup") is not None:  # the trial measured its latency
        assert float(version.tags["latency_speedup"]) == pytest.approx(
            exported["latency_speedup"], abs=1e-4
        )
    assert "`models:/e2e-vgg/1`" in (out / "report.md").read_text()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = load_pruned(out / "pruned.pt").eval()
    with torch.no_grad():
        want = model(images).numpy()  # (5, 4)
    got = mlflow.pyfunc.load_model("models:/e2e-vgg/1").predict(images.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    argv[argv.index(str(out))] = str(tmp_path / "again")
    assert main(argv) == 0  # without --json, the model's URI is printed
    assert capsys.readouterr().out.strip().splitlines()[-1] == "models:/e2e-vgg/2"


def test_register_refusals_are_one_line_after_the_files_are_written(
    searched, capsys, tmp_path
) -> None:
    config, uri, _ = searched
    client = MlflowClient(uri)
    (parent,), _ = runs(uri)
    client.create_registered_model("not-prunetune")
    client.create_model_version("not-prunetune", f"{parent.info.artifact_uri}/elsewhere")
    down = f"http://127.0.0.1:{free_port()}"  # the export then reads Ray's storage
    cases = {
        "taken": (["--register", "not-prunetune"], "its version 1 is not a prunetune model"),
        "down": (["--mlflow-uri", down, "--register", "e2e-down"], f"{down} is unreachable"),
    }
    for name, (extra, message) in cases.items():
        out = tmp_path / name
        assert main(["export", str(config), "--out", str(out), *extra]) == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if " error: " in ln]
        assert len(errors) == 1 and message in errors[0], errors
        assert f"the exported files are in {out}" in errors[0]
        assert {"schedule.yaml", "pruned.pt", "metrics.json", "report.md"} <= {
            p.name for p in out.iterdir()
        }


def _replay(schedule: Path, out: Path, capsys) -> dict:
    assert main(["replay", str(schedule), "--out", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_logs_its_compute_anytime_curve_and_what_mattered(searched) -> None:
    """The parent run's search_cost is the trials' compute summed (the ASHA-stopped and the
    failed ones with what they computed); its anytime curve only rises."""
    _, uri, _ = searched
    (parent,), trials = runs(uri)
    rows = rows_from_runs(trials, COSTS["compute"])
    total = per_trial_cost(rows)
    assert total > 0 and parent.data.metrics["search_cost"] == pytest.approx(total, rel=1e-9)
    assert parent.data.metrics["search_wall_s"] > 0
    client = MlflowClient(uri)

    def history(key: str) -> list:
        points = client.get_metric_history(parent.info.run_id, key)
        return sorted(points, key=lambda m: (m.timestamp, m.step))

    cost = history("search_cost")
    assert [m.value for m in cost] == sorted(m.value for m in cost)
    assert all(m.step == round(m.value * 1000) for m in cost)  # GMACs
    best = history("best_val_acc")
    assert [m.value for m in best] == sorted(m.value for m in best)
    assert best[-1].value == pytest.approx(max(r.val_acc for r in rows if r.usable))
    # 5 trials: too few for parameter importance, and it says so
    assert parent.data.tags["what_mattered"].startswith("too few finished trials to tell")
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert "importance.json" in files
