"""Issue 11's evidence: a converged baseline, then the recovery levers at equal compute.

    python experiments/recovery_levers/ablation.py run      # resumable: finished runs are kept
    python experiments/recovery_levers/ablation.py report   # RESULTS.md + figures here

`run` builds the study's data tree (500 test images per class held out), pretrains the
width-0.25 VGG19 on every image left after the test and val splits, picks the cosine arm's lr
on val (seed 0), then replays every arm at every budget on `seeds`, two runs at a time, the
budgets in increasing order (so a cut-short run still has whole budgets). Every run is a
`prunetune replay` of a schedule file, so each is reproducible on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository: commands run from here
sys.path.insert(0, str(ROOT))

from experiments.study_cifar10.study import Study, log  # noqa: E402
from pruning import schedule as schedule_io  # noqa: E402
from pruning.data import DataSpec  # noqa: E402
from pruning.run_info import ModelInfo, RunInfo  # noqa: E402
from pruning.schedule import Distill, Schedule, Stage, Training  # noqa: E402

ARMS = {
    "recipe": "Torch-Pruning recipe: one shot, step LR 0.01",
    "cosine": "recipe with cosine LR at the lr chosen on val",
    "kd": "recipe + distillation from the baseline (alpha 0.7, T 4)",
    "two_stage": "2 stages (2.97x then 8.84x) with a 10% floor, cosine at the chosen lr",
    "two_stage_kd": "the 2 stages with the floor, distilled (only where one epoch each fits)",
}


class Ablation:
    def __init__(self, config: dict[str, Any], out: Path, images: Path) -> None:
        self.c, self.out = config, out
        # The study's holdout (same seed, same 500 per class) and folder layout.
        self.study = Study(config, out, images)
        self.baseline = out / "baseline" / "baseline.pt"

    # --- data and baseline ---------------------------------------------------------------
    def data(self, subset: bool = True) -> dict[str, Any]:
        d = self.c["data"]
        spec = {
            "name": "imagefolder",
            "root": str(self.study.data_root),
            "val_size": d["val_size"],
            "split_seed": d["split_seed"],
        }
        return spec | ({"train_subset": d["train_subset"]} if subset else {})

    def pretrain(self) -> None:
        if self.baseline.exists():
            return
        p = self.c["pretrain"]
        config = {"data": self.data(subset=False), "width": self.c["width"], "seed": 0}
        config |= {k: p[k] for k in ("epochs", "lr", "lr_schedule")}
        config["out"] = str(self.baseline.parent)
        path = self.out / "baseline.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.study.sh("pretrain", ["pretrain", str(path)])

    # --- schedules -------------------------------------------------------------------------
    def schedule(self, arm: str, budget: int, lr: float) -> Schedule | None:
        """The arm's schedule at `budget` plain one-shot epochs of compute; None where the arm
        cannot fit in it (a whole epoch per stage costs more)."""
        target, c = self.c["target_speedup"], self.c
        no_floor = {"min_channels": 1, "min_channel_ratio": 0.0}
        if arm == "recipe":
            return Schedule(target, (Stage(target, budget, c["recipe_lr"], "step"),), **no_floor)
        if arm == "cosine":
            return Schedule(target, (Stage(target, budget, lr, "cosine"),), **no_floor)
        if arm == "kd":
            # A distilled epoch pays the teacher's forward pass: ~3.95 plain epochs here.
            stage = Stage(target, max(1, budget // 4), c["recipe_lr"], "step")
            return Schedule(target, (stage,), **no_floor, distill=Distill(**c["distill"]))
        return self._two_stage(budget, lr, distill=arm == "two_stage_kd")

    def _two_stage(self, budget: int, lr: float, distill: bool) -> Schedule | None:
        target, s1 = self.c["target_speedup"], self.c["two_stage"]["first_speedup"]

        def epoch_cost(s: float) -> float:
            """One epoch at speed-up s in plain epochs at the target: the student's
            forward+backward (3 MACs per MAC of the model) plus the teacher's forward."""
            return (3 / s + (1 if distill else 0)) / (3 / target)

        e1 = max(1, budget // 8)
        rest = budget - e1 * epoch_cost(s1)
        if rest < 0.75 * epoch_cost(target):
            return None  # the last stage's one epoch would overshoot the budget by > 25%
        e2 = max(1, round(rest / epoch_cost(target)))
        stages = (Stage(s1, e1, lr, "cosine"), Stage(target, e2, lr, "cosine"))
        floor = self.c["two_stage"]["min_channel_ratio"]
        kd = Distill(**self.c["distill"]) if distill else None
        return Schedule(target, stages, min_channel_ratio=floor, training=Training(), distill=kd)

    def write(self, name: str, schedule: Schedule) -> Path:
        run = RunInfo(
            model=ModelInfo("vgg19", self.c["width"]),
            data=DataSpec(**self.data()),
            seed=0,
            checkpoint=str(self.baseline),
            threads=self.c["threads"],
        )
        path = self.out / "schedules" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        return schedule_io.save(path, schedule, run, project=ROOT)

    # --- runs ----------------------------------------------------------------------------------
    def replay(self, name: str, schedule: Schedule, seed: int) -> Path:
        out = self.out / "runs" / name / f"seed{seed}"
        done = out / "metrics.json"
        if done.exists() and json.loads(done.read_text()).get("completed") == 1.0:
            return out
        path = self.write(name, schedule)
        args = ["replay", str(path), "--checkpoint", str(self.baseline), "--seed", str(seed)]
        args += ["--threads", str(self.c["threads"]), "--out", str(out)]
        self.study.sh(f"{name}/seed{seed}", args)
        return out

    def chosen_lr(self) -> float:
        """The cosine arm's lr: the best val accuracy at the smallest budget (the cheapest
        pick), seed 0."""
        budget = self.c["budgets"][0]
        lrs = self.c["cosine_lrs"]
        with ThreadPoolExecutor(self.c["parallel"]) as pool:
            jobs = [
                pool.submit(self.replay, f"lr_pick/lr{lr}", self.schedule("cosine", budget, lr), 0)
                for lr in lrs
            ]
            accs = [json.loads((j.result() / "metrics.json").read_text())["val_acc"] for j in jobs]
        best = lrs[max(range(len(lrs)), key=accs.__getitem__)]
        log(f"cosine lr on val (budget {budget}, seed 0): {dict(zip(lrs, accs, strict=True))}")
        return best

    def run(self) -> None:
        start = time.perf_counter()
        self.study.holdout()
        self.pretrain()
        lr = self.chosen_lr()
        jobs = [
            (f"{arm}/b{budget}", schedule, seed)
            for budget in self.c["budgets"]
            for seed in self.c["seeds"]
            for arm in ARMS
            if (schedule := self.schedule(arm, budget, lr)) is not None
        ]
        with ThreadPoolExecutor(self.c["parallel"]) as pool:
            for job in [pool.submit(self.replay, *j) for j in jobs]:
                job.result()
        log(f"all runs done ({time.perf_counter() - start:.0f} s this time); now run `report`")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("step", choices=("run", "report"))
    p.add_argument("--config", type=Path, default=HERE / "ablation.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "recovery")
    p.add_argument(
        "--images",
        type=Path,
        default=Path("~/.cache/prunetune-data/cifar10-jpeg").expanduser(),
        help="ImageFolder root holding train/<class>/*.jpg (unpack ../shared/data's tarball)",
    )
    p.add_argument("--results", type=Path, default=HERE, help="where report writes RESULTS.md")
    args = p.parse_args()
    config = yaml.safe_load(args.config.read_text())
    ablation = Ablation(config, args.out.resolve(), args.images.expanduser().resolve())
    if args.step == "run":
        ablation.run()
    else:
        from experiments.recovery_levers.report import write_report

        write_report(ablation, args.results)


if __name__ == "__main__":
    main()
