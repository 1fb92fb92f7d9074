"""`prunetune search`: baseline, parent MLflow run, Ray Tune over schedules, Pareto at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata as md
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from pruning.models import read_state_dict
from pruning.pretrain import PretrainConfig, pretrain
from pruning.run_info import ModelInfo, file_sha256
from search import pbt
from search.accounting import Spent, log_spent, previous_wall, spent
from search.callbacks import AnytimeCurve, TrialProgress
from search.cluster import check_resources, init_ray
from search.config import ExperimentConfig, config_from_dict, config_to_dict
from search.lock import search_lock
from search.progress import say
from search.rungs import RUNGS
from search.space import describe_space, is_reference, make_searcher, param_space
from search.strategies import is_pbt, migrate
from trainables import tracking
from trainables.lineage import Lineage, load_lineage
from trainables.trial import TrialContext, run_trial

PACKAGES = ("torch", "torchvision", "torch-pruning", "ray", "optuna", "mlflow")


@dataclass
class SearchOutcome:
    parent_run_id: str
    experiment_id: str
    # one per trial: trial_id, config, metrics, error, reference, lineage (PBT's, else None)
    results: list[dict[str, Any]]
    spent: Spent  # the fine-tune compute of all trials (search.accounting)
    wall_s: float  # wall seconds of the trials, earlier sessions of a resumed search included


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_tags(model: ModelInfo) -> dict[str, str]:
    """What the search prunes, as MLflow tags (params carry model.arch, model.width, ...)."""
    return {"arch": model.arch, "model": model.describe()}


def versions() -> dict[str, str]:
    return {f"version.{p}": md.version(p) for p in PACKAGES}


def baseline_weights(config: ExperimentConfig) -> tuple[dict[str, Any], str]:
    """The baseline state dict and its path; pretrains once when the config gives none."""
    if config.baseline.checkpoint:
        return read_state_dict(config.baseline.checkpoint), config.baseline.checkpoint
    path = config.out_dir / "baseline" / "baseline.pt"
    if path.is_file() and not _same_baseline(config, path.parent / "metrics.json"):
        say(f"the baseline in {path.parent} was trained on other data or model: training again")
        path.unlink()
    if not path.is_file():
        say(
            f"no baseline checkpoint given: pretraining {config.model.describe()} for "
            f"{config.baseline.pretrain_epochs} epochs -> {path}"
        )
        metrics = pretrain(
            PretrainConfig(
                data=config.data,
                model=config.model,
                epochs=config.baseline.pretrain_epochs,
                lr=config.baseline.pretrain_lr,
                lr_schedule="cosine",
                training=config.training,
                seed=config.seed,
                device=config.device,
                out=str(path.parent),
            )
        )
        say(f"baseline val acc {metrics['val_acc']:.2%} ({metrics['data']})")
    return read_state_dict(path), str(path)


def _same_baseline(config: ExperimentConfig, metrics_file: Path) -> bool:
    if not metrics_file.is_file():
        return False
    saved = json.loads(metrics_file.read_text()).get("config", {})
    model = config.model.to_dict()
    # Pretrained before the model registry: a VGG19 whose config had a top-level width.
    old = {"arch": "vgg19", "width": saved.get("width"), "num_classes": None}
    return saved.get("data") == dataclasses.asdict(config.data) and saved.get("model", old) == model


def baseline_accuracy(config: ExperimentConfig, path: str) -> float | None:
    """The baseline's validation accuracy when pretraining left it next to the weights (for this
    data and width): the accuracy plots start from it."""
    metrics = Path(path).parent / "metrics.json"
    if not _same_baseline(config, metrics):
        return None
    return float(json.loads(metrics.read_text())["val_acc"])


def _state_file(config: ExperimentConfig) -> Path:
    return config.out_dir / "search.json"


def _parent_run(config: ExperimentConfig, resume: bool) -> tuple[str, str]:
    uri = config.tracking_uri
    experiment_id = tracking.ensure_experiment(
        uri,
        config.experiment_name,
        None if uri.startswith("http") else (config.out_dir / "mlartifacts").as_uri(),
    )
    state = _state_file(config)
    if resume and state.is_file():
        saved = json.loads(state.read_text())
        tracking.set_tags(uri, saved["parent_run_id"], {"resumed": "true"})
        return saved["parent_run_id"], experiment_id
    config_file = config.out_dir / "experiment.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    space_file = config.out_dir / "search_space.json"
    space_file.write_text(json.dumps(describe_space(config.space), indent=2))
    parent = tracking.start_parent(
        uri,
        experiment_id,
        f"search-{config.name}",
        params={k: v for k, v in _flatten(config_to_dict(config)).items()},
        tags={"git_commit": git_commit(), **versions(), **model_tags(config.model)},
        files=[config_file, space_file],
    )
    state.write_text(json.dumps({"parent_run_id": parent, "experiment_id": experiment_id}))
    return parent, experiment_id


# Settings that may change between a search and its resume: the cluster it runs on.
RESUME_MAY_DIFFER = ("ray_address",)


def check_resumable(config: ExperimentConfig, force: bool) -> None:
    """--resume continues the search whose state is in the out folder, under the config it
    started with: refuse when there is none, and when the config now differs (unless force)."""
    state, stored = _state_file(config), config.out_dir / "experiment.yaml"
    if not state.is_file():
        raise ValueError(
            f"--resume: there is no search to resume in {config.out_dir} (no search.json); "
            "pass the overrides (out=..., name=...) the search ran with, or drop --resume to "
            "start a new search"
        )
    if not stored.is_file():
        say(f"--resume: {stored} is missing, so the config cannot be compared; resuming")
        return
    before = _flatten(_as_now(yaml.safe_load(stored.read_text()) or {}))
    now = _flatten(config_to_dict(config))
    differ = sorted(
        k
        for k in before.keys() | now.keys()
        if before.get(k) != now.get(k) and k not in RESUME_MAY_DIFFER
    )
    if not differ:
        return
    changes = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in differ)
    if not force:
        raise ValueError(
            f"--resume: the config differs from the one the search in {config.out_dir} started "
            f"with ({changes}). Resume with the same config and overrides, start a new search "
            "in another folder (out=...), or pass --force to resume under the new config"
        )
    say(f"--resume --force: resuming although the config changed ({changes})")


def _as_now(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored config read by this version: a field added since (its default keeps the old
    behaviour) is not a difference. As it was stored when this version cannot read it."""
    try:
        return config_to_dict(config_from_dict(stored))
    except (ValueError, TypeError):
        return migrate(stored)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _trainable(config: ExperimentConfig, context: TrialContext, baseline: dict[str, Any]) -> Any:
    with_data = tune.with_parameters(run_trial, context=context, baseline=baseline)
    return tune.with_resources(
        with_data, {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    )


def _tuner(
    config: ExperimentConfig, trainable: Any, resume: bool, curve: AnytimeCurve
) -> tune.Tuner:
    path = config.storage / config.name
    if resume and tune.Tuner.can_restore(str(path)):
        say(f"resuming the search in {path}")
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=pbt.population_space(config) if is_pbt(config) else param_space(config.space),
        tune_config=pbt.tune_config(config) if is_pbt(config) else _tune_config(config),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=str(config.storage),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # PBT restores a bottom trial from a top trial's stage checkpoint after the top
            # trial may have saved its next one: keep them all
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if is_pbt(config) else 1),
            callbacks=[TrialProgress(config.num_trials, config.cost_objective), curve],
            verbose=0,
        ),
    )


def _tune_config(config: ExperimentConfig) -> tune.TuneConfig:
    """An Optuna strategy's: its searcher, and early stopping (asha.rungs) when enabled."""
    scheduler = None
    if config.asha.enabled:
        scheduler = RUNGS[config.asha.rungs].build(config.asha, asha_max_t(config))
    return tune.TuneConfig(
        search_alg=make_searcher(config, f"sqlite:///{config.out_dir / 'optuna.db'}"),
        scheduler=scheduler,
        num_samples=config.num_trials,
    )


def asha_max_t(config: ExperimentConfig) -> float:
    """ASHA's max_t in epochs (trials report their cost in epochs, trainables.trial.asha_time).
    It only has to exceed every trial's total, since ASHA stops a trial that reaches it: with
    `cost: compute` a distilled epoch costs 4/3 of a plain one (the teacher's forward on top of
    the student's 3 passes) and each stage's BN recalibration is counted on top, so the bound
    leaves room for 4 epochs' worth of recalibration per stage (20 batches of 128 images are
    under that for any training split of 214 images or more). Rungs past a trial's end
    never fire, so a generous bound costs nothing."""
    budget = float(config.space.budget)
    if config.cost == "epochs":
        return budget
    return budget * 4 / 3 + config.space.max_stages * 4.0


@contextlib.contextmanager
def search_session(config: ExperimentConfig, resume: bool, force: bool = False) -> Iterator[None]:
    """The life of one search: what --resume would continue is checked first (before any
    folder is made), then the out folder is locked until the front has been read and logged."""
    if resume:
        check_resumable(config, force)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    with search_lock(config.out_dir):
        yield


def run_search(config: ExperimentConfig, resume: bool = False) -> SearchOutcome:
    # The config was checked whole when it was made (points, floor against target): no
    # compute has started yet.
    config.out_dir.mkdir(parents=True, exist_ok=True)
    tracking.check_reachable(config.tracking_uri)
    init_ray(config)
    check_resources(config)  # trials that can never be placed: now, not after the pretraining
    baseline, baseline_path = baseline_weights(config)
    parent, experiment_id = _parent_run(config, resume)
    base_acc = baseline_accuracy(config, baseline_path)
    if base_acc is not None:
        tracking.log_metrics(config.tracking_uri, parent, {"base_val_acc": base_acc}, step=0)
    say(
        f"search {config.name}: {config.num_trials} trials, MLflow {config.tracking_uri} "
        f"(parent run {parent})"
    )
    context = TrialContext(
        target_speedup=config.target_speedup,
        latency_target=config.target,
        training=config.training,
        sparse_reg=config.space.sparse_reg,
        data=config.data,
        model=config.model,
        seed=config.seed,
        tracking_uri=config.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        baseline_path=baseline_path,
        baseline_sha256=file_sha256(baseline_path),
        cost=config.cost,
        latency=config.latency,
        model_flavours=config.mlflow.model_flavours,
        pbt=is_pbt(config),
    )
    curve = AnytimeCurve(config.tracking_uri, parent, config.cost_objective.metric)
    tuner = _tuner(config, _trainable(config, context, baseline), resume, curve)
    wall_before, started = previous_wall(config.tracking_uri, parent), time.monotonic()
    grid = tuner.fit()
    wall_s = wall_before + time.monotonic() - started
    results = [
        {
            "trial_id": r.metrics.get("trial_id") if r.metrics else None,
            "config": r.config,
            "metrics": r.metrics or {},
            "error": str(r.error) if r.error else None,
            "reference": config.reference_trial and is_reference(r.config, config),
            "lineage": _lineage(r) if is_pbt(config) else None,
        }
        for r in grid
    ]
    # The curve saw every attempt's reports (a PBT trial restarted from a donor's checkpoint
    # is a new attempt); a restored Tuner runs its own unpickled copy, so then the grid's.
    total = curve.last or spent((r["metrics"] for r in results), config.cost_objective.metric)
    try:
        log_spent(config.tracking_uri, parent, total, wall_s)
    except RuntimeError as err:
        say(f"warning: the search's compute and wall time were not logged to MLflow ({err})")
    return SearchOutcome(parent, experiment_id, results, total, wall_s)


def _lineage(result: Any) -> Lineage | None:
    """A PBT trial's lineage: the stages it ran, from its last checkpoint (None: it has none)."""
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as folder:
        return load_lineage(Path(folder))


def failure_summary(results: list[dict[str, Any]]) -> str | None:
    """When every trial failed: how many, and the most common error (its last line, where Ray's
    traceback names the exception). None when at least one trial did not fail."""
    errors = [r["error"] for r in results if r["error"]]
    if not results or len(errors) < len(results):
        return None
    last_lines = [[ln for ln in e.strip().splitlines() if ln.strip()][-1].strip() for e in errors]
    common, count = Counter(last_lines).most_common(1)[0]
    return (
        f"all {len(results)} trials failed; the most common error ({count} of {len(results)}): "
        f"{common}"
    )
