"""The CIFAR-10 study: Torch-Pruning's one-shot recipe vs. a hand-made iterative schedule vs. a
prunetune search, all at the same fine-tune budget, on the real CIFAR-10 training JPEGs.

    python experiments/study_cifar10/study.py run     # every step; finished steps are skipped
    python experiments/study_cifar10/study.py report  # RESULTS.md, plots and models from the runs

Every step is a `prunetune` command (recorded in commands.json) writing into --out, and a step
whose outputs exist is not run again, so an interrupted study continues where it stopped.

Splits: 500 images per class of the 50,000 are held out as `test` (a symlink tree), and never
seen by any selection; `val` is carved from the rest by prunetune and is all that pretraining's
best epoch, the search and the pick ever see. Test accuracy is computed only in `report`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from pruning import schedule as schedule_io  # noqa: E402
from pruning.data import DataSpec  # noqa: E402
from pruning.run_info import ModelInfo, RunInfo  # noqa: E402
from pruning.schedule import Stage, Training  # noqa: E402

ARMS = ("recipe", "iterative", "searched")


def portable_arg(arg: str) -> str:
    """A command-line argument as run from the repository root: its paths relative to it."""
    return (
        os.path.relpath(arg, ROOT)
        if Path(arg).is_absolute() and Path(arg).is_relative_to(ROOT)
        else arg
    )


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prunetune_cmd() -> list[str]:
    """The venv's console script when present, else the module (same code either way)."""
    script = Path(sys.executable).parent / "prunetune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "search.cli"]


class Study:
    def __init__(
        self, config: dict[str, Any], out: Path, images: Path, torchvision: Path | None = None
    ) -> None:
        self.c, self.out, self.images, self.torchvision = config, out, images, torchvision
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_root = out / "data"
        self.baseline = out / "baseline" / "baseline.pt"
        self.timings_path = out / "timings.json"
        self.lock = threading.Lock()
        self.commands_path = out / "commands.json"  # step -> the command it ran
        known = self.commands_path.exists()
        self.commands = json.loads(self.commands_path.read_text()) if known else {}
        saved = self.timings_path.exists()
        self.timings = json.loads(self.timings_path.read_text()) if saved else {}

    # --- running commands -------------------------------------------------------------------
    def sh(self, step: str, args: list[str]) -> None:
        # As run from the repository root (where it runs): no folder of this machine in it.
        shown = "prunetune " + " ".join(shlex.quote(portable_arg(a)) for a in args)
        with self.lock:
            self.commands[step] = shown
            self.commands_path.write_text(json.dumps(self.commands, indent=2) + "\n")
        log(f"{step}: {shown}")
        start = time.perf_counter()
        # Every step gets the same torch thread count (pretrain and Ray trials read it here).
        env = os.environ | {"OMP_NUM_THREADS": str(self.c["threads"])}
        subprocess.run(prunetune_cmd() + args, check=True, cwd=ROOT, env=env)
        with self.lock:  # final runs finish from several threads
            self.timings[step] = round(time.perf_counter() - start, 1)
            self.timings_path.write_text(json.dumps(self.timings, indent=2) + "\n")

    # --- data -------------------------------------------------------------------------------
    def holdout(self) -> None:
        """A tree ROOT/{train,test}/<class>/ of symlinks: `test_per_class` per class held out."""
        done = self.data_root / ".done"
        if self.torchvision or done.exists():
            return  # torchvision's CIFAR-10 has its own test split
        src = self.images / "train"
        if not src.is_dir():
            raise SystemExit(
                f"no ImageFolder at {src}: pass --tarball cifar10-train-jpeg.tar.gz (unpacked "
                "there once), or --torchvision DIR to use torchvision's CIFAR-10 instead"
            )
        d = self.c["data"]
        rng = random.Random(d["holdout_seed"])
        for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
            files = sorted((src / cls).iterdir())
            rng.shuffle(files)
            k = d["test_per_class"]
            for split, part in (("test", files[:k]), ("train", files[k:])):
                folder = self.data_root / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                for f in part:
                    (folder / f.name).unlink(missing_ok=True)
                    (folder / f.name).symlink_to(f.resolve())
        done.write_text("ok\n")
        log(f"held out {d['test_per_class']} images per class as test under {self.data_root}")

    def data_section(self) -> dict[str, Any]:
        d = self.c["data"]
        source = {"name": "imagefolder", "root": str(self.data_root)}
        if self.torchvision:
            source = {"name": "cifar10", "root": str(self.torchvision), "download": True}
        return source | {
            "val_size": d["val_size"],
            "split_seed": d["split_seed"],
            "train_subset": d["train_subset"],
        }

    # --- steps --------------------------------------------------------------------------------
    def pretrain(self) -> None:
        if self.baseline.exists():
            return
        p = self.c["pretrain"]
        config = {
            "data": self.data_section(),
            "width": self.c["width"],
            "epochs": p["epochs"],
            "lr": p["lr"],
            "lr_schedule": p["lr_schedule"],
            "seed": 0,
            "out": str(self.baseline.parent),
        }
        path = self.write_yaml("baseline.yaml", config)
        self.sh("pretrain", ["pretrain", str(path)])

    def hand_made(self) -> dict[str, Path]:
        """Arms 1 and 2 as schedule files; both use the recipe's lr, LR schedule and no floor."""
        b, n, lr, target = (
            self.c["budget_epochs"],
            self.c["iterative_stages"],
            self.c["recipe_lr"],
            self.c["target_speedup"],
        )
        if b % n:
            raise SystemExit(f"budget_epochs={b} must be a multiple of iterative_stages={n}")
        speedups = [target ** ((i + 1) / n) for i in range(n)]
        speedups[-1] = target
        stages = {
            "recipe": (Stage(target, b, lr, "step"),),
            "iterative": tuple(Stage(s, b // n, lr, "step") for s in speedups),
        }
        run = RunInfo(
            model=ModelInfo("vgg19", self.c["width"]),
            data=DataSpec(**self.data_section()),
            seed=0,
        )
        paths = {}
        for arm, st in stages.items():
            sched = schedule_io.Schedule(
                target, st, min_channels=1, min_channel_ratio=0.0, training=Training()
            )
            paths[arm] = schedule_io.save(self.out / f"{arm}.yaml", sched, run, project=ROOT)
        return paths

    def search_config(self) -> Path:
        s = self.c["search"]
        config = {
            "name": "study_cifar10",
            "target_speedup": self.c["target_speedup"],
            "width": self.c["width"],
            "data": self.data_section(),
            "baseline": {"checkpoint": str(self.baseline)},
            "space": {
                "max_stages": s["max_stages"],
                "total_epochs": [self.c["budget_epochs"]],
                "lr_min": s["lr_min"],
                "lr_max": s["lr_max"],
                "lr_schedules": s["lr_schedules"],
                "importances": s["importances"],
                "rankings": ["global"],
                "min_channel_ratios": s["min_channel_ratios"],
                "sparse_epochs": [0],
            },
            "reference_trial": True,
            "strategy": "tpe",
            "seed": 0,
            "num_trials": s["num_trials"],
            "max_concurrent": s["max_concurrent"],
            "resources": {"cpu": s["cpu_per_trial"], "gpu": 0},
            "max_failures": 1,
            "out": str(self.out / "search"),
        }
        return self.write_yaml("search.yaml", config)

    def search(self) -> Path:
        config, export = self.search_config(), self.out / "search" / "export"
        if (export / "schedule.yaml").exists():
            return export / "schedule.yaml"
        resume = ["--resume"] if (self.out / "search" / "search.json").exists() else []
        self.sh("search", ["search", str(config), *resume])
        self.sh("export", ["export", str(config), "--pick", "max-acc", "--out", str(export)])
        return export / "schedule.yaml"

    def final(self, arm: str, schedule: Path, seed: int) -> None:
        out = self.out / "arms" / arm / f"seed{seed}"
        done = out / "metrics.json"
        if done.exists() and json.loads(done.read_text()).get("completed") == 1.0:
            return
        self.sh(
            f"{arm}/seed{seed}",
            [
                "replay",
                str(schedule),
                "--checkpoint",
                str(self.baseline),
                "--seed",
                str(seed),
                "--threads",
                str(self.c["threads"]),
                "--out",
                str(out),
            ],
        )

    def write_yaml(self, name: str, obj: dict[str, Any]) -> Path:
        path = self.out / name
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        return path

    def run(self) -> None:
        start = time.perf_counter()
        self.holdout()
        self.pretrain()
        schedules = self.hand_made()
        schedules["searched"] = self.search()
        # Final runs `parallel` at a time (one torch thread each), like the search's trials.
        jobs = [(arm, schedules[arm], seed) for seed in self.c["seeds"] for arm in ARMS]
        with ThreadPoolExecutor(self.c["parallel"]) as pool:
            for done in [pool.submit(self.final, *job) for job in jobs]:
                done.result()
        log(f"all steps done ({time.perf_counter() - start:.0f} s this time); now run `report`")


def load_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    from pruning.pretrain import apply_overrides

    return apply_overrides(yaml.safe_load(path.read_text()), overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("step", choices=("run", "report"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. search.num_trials=4")
    p.add_argument("--config", type=Path, default=HERE / "study.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "study_cifar10")
    p.add_argument(
        "--images",
        type=Path,
        default=Path("~/.cache/prunetune-data/cifar10-jpeg").expanduser(),
        help="ImageFolder root holding train/<class>/*.jpg (the CIFAR-10 JPEGs)",
    )
    p.add_argument("--tarball", type=Path, help="the JPEG tarball, unpacked into --images once")
    p.add_argument(
        "--torchvision",
        type=Path,
        metavar="DIR",
        help="use torchvision's CIFAR-10 in DIR (downloaded there; its test split is the test)",
    )
    p.add_argument("--results", type=Path, default=HERE, help="where report writes RESULTS.md")
    args = p.parse_args()
    config = load_config(args.config, args.overrides)
    images = args.images.expanduser().resolve()
    tarball = args.tarball if args.tarball and args.tarball.is_file() else None
    if tarball and not (images / "train").is_dir() and not args.torchvision:
        log(f"unpacking {tarball} into {images} (once)")
        images.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(images, filter="data")
    torchvision = args.torchvision.expanduser().resolve() if args.torchvision else None
    study = Study(config, args.out.resolve(), images, torchvision)
    if args.step == "run":
        study.run()
    else:
        from experiments.study_cifar10.report import write_report

        write_report(study, args.results.resolve())


if __name__ == "__main__":
    main()
