"""Issue 12's evidence: search strategies at equal compute.

    python experiments/bench/search_strategies.py run      # resumable: finished steps are kept
    python experiments/bench/search_strategies.py report   # a section of RESULTS.md + figure
    python experiments/bench/search_strategies.py run --smoke  # tiny, generated data: it works

Setup: the CIFAR-10 study's data tree (the recovery-levers ablation's, runs/recovery/data: 500
test images per class held out by the study's Study.holdout, built there when missing), its val
carve, the converged width-0.25 baseline of the recovery-levers issue (--baseline), the 8.84x
target, `trial_epochs` fine-tune epochs per trial and one compute budget per search:
`budget_trials` x U, where U is one full trial's worth, the train TMACs of `trial_epochs` epochs
of the 8.84x model on the `train_subset` images (pruning.compute.finetune_tmacs).

How the budget is enforced, per strategy:
- random, tpe: the search may run up to ceil(budget_trials) + max_concurrent trials (no trial
  costs less than U: one stage at the target; earlier stages train a bigger model), and this
  script stops it once the compute it has accounted (the parent MLflow run's `search_cost`,
  search/accounting.py) reaches the budget: SIGUSR1, Ray Tune's graceful stop. The trial whose
  report crosses the budget still counts (the overshoot is at most one stage of one trial); the
  trials then in flight are stopped within seconds and count with the compute they reported (a
  stage that ends during the stop still reports its accuracy, uncounted).
- pbt (when search.strategies.STRATEGIES has it): a stopped population would leave no finished
  lineage, so its population size is what holds it to the budget: budget_trials / the cost of
  one space.max_stages trial split evenly (in U), at least 2. Its compute is reported as spent.

Every search is a `prunetune search` of a generated experiment file; its best trial by val acc
(`prunetune export --pick max-acc`) is replayed once on `replay_seed` (`prunetune replay`), and
the replayed model's held-out test accuracy is computed only in `report`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository: commands run from here
sys.path.insert(0, str(ROOT))

from experiments.recovery_levers.ablation import Ablation  # noqa: E402
from experiments.study_cifar10.study import log, portable_arg, prunetune_cmd  # noqa: E402
from pruning.compute import finetune_tmacs  # noqa: E402
from pruning.models import build_model, example_input  # noqa: E402
from pruning.prune import count_macs_params  # noqa: E402
from search.accounting import SEARCH_COST  # noqa: E402
from search.config import load_config  # noqa: E402
from search.strategies import STRATEGIES  # noqa: E402
from trainables import tracking  # noqa: E402

BASELINE = ROOT / "experiments" / "recovery_levers" / "baseline" / "baseline.pt"
POLL_S = 5.0  # how often the budget watch reads the parent run's search_cost


def pbt_trial_units(target: float, stages: int) -> float:
    """A `stages`-stage trial's compute in U when its speed-ups are equal steps in log speed-up
    and its epochs equal shares: stage i trains a model target / s_i times the final's MACs."""
    return sum(target ** (1 - i / stages) for i in range(1, stages + 1)) / stages


class Bench:
    def __init__(self, c: dict[str, Any], out: Path, data_out: Path, images: Path) -> None:
        self.c, self.out = c, out
        self.smoke = False  # main sets it for --smoke (the report says so)
        # The ablation's data tree (the study's holdout); its baseline path when smoke-pretrained.
        self.ablation = Ablation(c, data_out, images)
        self.baseline = self.ablation.baseline
        self.commands_path = out / "commands.json"
        known = self.commands_path.exists()
        self.commands = json.loads(self.commands_path.read_text()) if known else {}

    # --- commands ----------------------------------------------------------------------------
    def command(self, step: str, args: list[str]) -> subprocess.Popen:
        shown = "prunetune " + " ".join(shlex.quote(portable_arg(a)) for a in args)
        self.commands[step] = shown
        self.commands_path.write_text(json.dumps(self.commands, indent=2) + "\n")
        log(f"{step}: {shown}")
        env = os.environ | {"OMP_NUM_THREADS": str(self.c["threads"])}
        return subprocess.Popen(prunetune_cmd() + args, cwd=ROOT, env=env)

    def sh(self, step: str, args: list[str]) -> None:
        rc = self.command(step, args).wait()
        if rc:
            raise SystemExit(f"{step} failed (exit {rc}): {self.commands[step]}")

    # --- budget ------------------------------------------------------------------------------
    def unit_tmacs(self, experiment: Path) -> float:
        """U: one full trial, `trial_epochs` epochs of the 8.84x model on train_subset images."""
        spec = load_config(experiment).model_spec
        dense, _ = count_macs_params(build_model(spec), example_input(spec))
        images = self.c["data"]["train_subset"] * self.c["trial_epochs"]
        return finetune_tmacs(dense / self.c["target_speedup"], images)

    def arm(self, name: str) -> dict[str, Any]:
        """A search arm: a registered strategy's name alone, or an entry of the config's `arms`
        (the strategy it runs and the experiment-file keys it adds, e.g. early stopping)."""
        return self.c.get("arms", {}).get(name, {"strategy": name})

    def strategy(self, name: str) -> str:
        return self.arm(name)["strategy"]

    def trials(self, name: str) -> int:
        if STRATEGIES[self.strategy(name)].kind == "pbt":
            per = pbt_trial_units(self.c["target_speedup"], self.c["space"]["max_stages"])
            return max(2, round(self.c["budget_trials"] / per))
        # Early stopping makes trials cheaper than U: more fit the budget the watch enforces.
        cheaper = 3 if "asha" in self.arm(name) else 1
        return cheaper * math.ceil(self.c["budget_trials"]) + self.c["max_concurrent"]

    # --- one search --------------------------------------------------------------------------
    def folder(self, strategy: str, seed: int) -> Path:
        return self.out / "searches" / f"{strategy}_s{seed}"

    def experiment(self, name: str, seed: int) -> Path:
        n, pbt = self.trials(name), STRATEGIES[self.strategy(name)].kind == "pbt"
        concurrent = n if pbt else self.c["max_concurrent"]
        cpus = os.cpu_count() or 1
        config = {
            "name": f"bench_{name.replace('+', '_')}_s{seed}",
            "target_speedup": self.c["target_speedup"],
            "width": self.c["width"],
            "data": self.ablation.data(),
            "baseline": {"checkpoint": str(self.baseline)},
            "space": self.c["space"] | {"total_epochs": [self.c["trial_epochs"]]},
            # Every trial is the strategy's own choice (pbt refuses the one-stage reference).
            "reference_trial": False,
            "strategy": self.strategy(name),
            "seed": seed,
            "num_trials": n,
            "max_concurrent": concurrent,
            "resources": {"cpu": min(1.0, cpus / concurrent), "gpu": 0},
            "max_failures": 1,
            "latency": {"enabled": False},  # not what is compared; saves each trial's timing
            "mlflow": {"log_models": False},
            "out": str(self.folder(name, seed)),
        } | {k: v for k, v in self.arm(name).items() if k != "strategy"}
        path = self.folder(name, seed) / "experiment_input.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def search(self, strategy: str, seed: int) -> Path:
        """Search, then export the best trial by val acc; returns the export folder."""
        folder, step = self.folder(strategy, seed), f"{strategy}/s{seed}"
        export = folder / "export"
        if (export / "schedule.yaml").exists():
            return export
        experiment = self.experiment(strategy, seed)
        if not (folder / "search.done").exists():
            resume = ["--resume"] if (folder / "search.json").exists() else []
            proc = self.command(f"{step}/search", ["search", str(experiment), *resume])
            budget = None
            if STRATEGIES[self.strategy(strategy)].kind != "pbt":
                budget = self.c["budget_trials"] * self.unit_tmacs(experiment)
            rc = self.watch(proc, experiment, budget)
            if rc:
                raise SystemExit(f"{step}: the search failed (exit {rc})")
            (folder / "search.done").write_text("ok\n")
        args = ["export", str(experiment), "--pick", "max-acc", "--out", str(export)]
        self.sh(f"{step}/export", args)
        return export

    def watch(self, proc: subprocess.Popen, experiment: Path, budget: float | None) -> int:
        """Wait for the search; with a budget, stop it (Ray Tune's graceful SIGUSR1) once the
        parent run's accounted compute reaches it. The signal is sent only once search_cost
        exists, i.e. inside Tune's loop, whose handler turns it into a stop."""
        config = load_config(experiment)
        state = config.out_dir / "search.json"
        while proc.poll() is None:
            time.sleep(POLL_S)
            if budget is None or not state.exists():
                continue
            parent = json.loads(state.read_text())["parent_run_id"]
            try:
                spent = tracking.run_metrics(config.tracking_uri, parent).get(SEARCH_COST)
            except RuntimeError:
                continue  # the database is busy: read again at the next poll
            if spent is not None and spent >= budget:
                log(f"{config.name}: {spent:.4g} of {budget:.4g} TMACs spent: stopping the search")
                proc.send_signal(signal.SIGUSR1)
                budget = None
        return proc.wait()

    def replay(self, strategy: str, seed: int, export: Path) -> Path:
        out = self.folder(strategy, seed) / "replay"
        done = out / "metrics.json"
        if done.exists() and json.loads(done.read_text()).get("completed") == 1.0:
            return out
        args = ["replay", str(export / "schedule.yaml"), "--checkpoint", str(self.baseline)]
        args += ["--seed", str(self.c["replay_seed"]), "--threads", str(self.c["threads"])]
        args += ["--no-latency", "--out", str(out)]
        self.sh(f"{strategy}/s{seed}/replay", args)
        return out

    # --- all ----------------------------------------------------------------------------------
    def strategies(self) -> list[str]:
        """The config's arms whose strategy is registered (a missing one is said, and skipped)."""
        names = []
        for name in self.c["strategies"]:
            if self.strategy(name) in STRATEGIES:
                names.append(name)
            else:
                log(f"strategy {name!r} is not registered here ({STRATEGIES.names()}): skipped")
        return names

    def prepare(self, smoke: bool) -> None:
        self.ablation.study.holdout()
        if smoke:
            self.ablation.pretrain()
        elif not self.baseline.is_file():
            raise SystemExit(
                f"no baseline at {self.baseline}: run experiments/recovery_levers/ablation.py "
                "run (it trains the converged baseline), or pass --baseline PATH"
            )

    def run(self, smoke: bool) -> None:
        start = time.perf_counter()
        self.prepare(smoke)
        jobs = [(s, seed) for seed in self.c["search_seeds"] for s in self.strategies()]
        exports = {job: self.search(*job) for job in jobs}  # one search at a time, all cores
        with ThreadPoolExecutor(self.c["max_concurrent"]) as pool:
            for done in [pool.submit(self.replay, *job, exports[job]) for job in jobs]:
                done.result()
        log(f"all steps done ({time.perf_counter() - start:.0f} s this time); now run `report`")


# --- smoke data ------------------------------------------------------------------------------
def smoke_images(folder: Path, per_class: int) -> Path:
    """ImageFolder train/<class>/*.jpg of 10 classes: a colour per class plus noise, so a
    1-epoch model learns something. Written once."""
    from PIL import Image

    if (folder / "train").is_dir():
        return folder
    rng = random.Random(0)
    for k in range(10):
        colour = [(k * 67 + 40 * c) % 256 for c in range(3)]
        cls = folder / "train" / f"class{k}"
        cls.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = bytes(
                min(255, max(0, colour[j % 3] + rng.randint(-60, 60))) for j in range(32 * 32 * 3)
            )
            Image.frombytes("RGB", (32, 32), pixels).save(cls / f"{i}.jpg", quality=90)
    return folder


def smoke_config(c: dict[str, Any]) -> dict[str, Any]:
    smoke = dict(c["smoke"])
    smoke.pop("images_per_class")
    return c | smoke


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("step", choices=("run", "report"))
    p.add_argument("--config", type=Path, default=HERE / "search_strategies.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "search_strategies")
    p.add_argument(
        "--data-out",
        type=Path,
        default=ROOT / "runs" / "recovery",
        help="the recovery-levers ablation's --out: its data/ tree is shared (built when missing)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=Path("~/.cache/prunetune-data/cifar10-jpeg").expanduser(),
        help="ImageFolder root holding train/<class>/*.jpg (the CIFAR-10 JPEGs)",
    )
    p.add_argument("--baseline", type=Path, default=BASELINE, help="the converged baseline")
    p.add_argument("--results", type=Path, default=HERE, help="where report writes RESULTS.md")
    p.add_argument("--smoke", action="store_true", help="tiny run on generated images, x0.125")
    args = p.parse_args()
    c = yaml.safe_load(args.config.read_text())
    out, data_out, images = args.out.resolve(), args.data_out.resolve(), args.images
    results = args.results.resolve()
    if args.smoke:
        out = out.parent / f"{out.name}_smoke"
        data_out, results = out / "data_tree", out / "report"
        images = smoke_images(out / "images", c["smoke"]["images_per_class"])
        c = smoke_config(c)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(c, out, data_out, images.expanduser().resolve())
    bench.smoke = args.smoke
    if not args.smoke:
        bench.baseline = args.baseline.resolve()
    if args.step == "run":
        bench.run(args.smoke)
    else:
        from experiments.bench.search_strategies_report import write_report

        write_report(bench, results)


if __name__ == "__main__":
    main()
