"""Load test: a search of many tiny trials on loopback against a real `mlflow server` holds.

The trials are as short as the config allows and prune-only (issue 15 item 15: one stage,
space.total_epochs [0], so no fine-tune; ~100 generated images at 1/8 width: pruning, BN
recalibration and evaluation are all a trial does) and run `--concurrency` at a time
(cpu 2/concurrency each, on this 2-core machine). Checks and records:
- every trial finishes, with exactly one FINISHED MLflow run per trial;
- MLflow errors that were retried: the driver's "retry" lines, the trial runs' retry tags, and
  the server's own "database is locked" log lines (counted, never swallowed);
- the driver's resident memory (RSS) sampled over the search;
- per-trial overhead (search wall time / trials) and the time `prunetune pareto` and
  `prunetune report` take to read the trials back, projected linearly to 1,000 trials.
Prints a table, then one JSON line. Exits non-zero when a check fails.

    PYTHONPATH=. python experiments/bench/load_test.py --trials 200   # the full run (~1 h)
    PYTHONPATH=. python experiments/bench/load_test.py --trials 6     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RETRIES_TAG = "prunetune.mlflow_retries"  # trainables.tracking.RETRIES_TAG


def experiment(trials: int, concurrency: int, out: Path) -> dict[str, Any]:
    return {
        "name": "load",
        "target_speedup": 2.0,
        "width": 0.125,
        "data": {"name": "synthetic", "samples": 120, "num_classes": 4, "val_size": 0.2},
        "baseline": {"pretrain_epochs": 1},
        "space": {"max_stages": 1, "total_epochs": [0]},
        "training": {"batch_size": 128},
        "num_trials": trials,
        "max_concurrent": concurrency,
        "resources": {"cpu": round(2 / concurrency, 3), "gpu": 0},
        "device": "cpu",
        "out": str(out),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'db.sqlite'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the mlflow server did not start; see {log}")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample_rss(pid: int, samples: list[tuple[float, float]], every: float = 2.0) -> None:
    start = time.monotonic()
    while (mb := rss_mb(pid)) is not None:
        samples.append((round(time.monotonic() - start, 1), round(mb, 1)))
        time.sleep(every)


def prunetune(*argv: str, cwd: Path, log: Path | None = None) -> tuple[float, str]:
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if log:
        log.write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"prunetune {argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def search(config: Path, uri: str, cwd: Path, log: Path) -> tuple[float, list, str]:
    """The search as a user runs it, its driver's RSS sampled meanwhile."""
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "search.cli", "search", str(config), "--mlflow-uri", uri],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        samples: list[tuple[float, float]] = []
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples), daemon=True)
        sampler.start()
        code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the search failed ({code}):\n{log.read_text()[-3000:]}")
    return seconds, samples, log.read_text()


def check_runs(uri: str, trials: int) -> dict[str, Any]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("load")
    runs = c.search_runs(
        [exp.experiment_id], filter_string="tags.`prunetune.role` = 'trial'", max_results=50000
    )
    finished = Counter(
        r.data.tags.get("prunetune.trial_id") for r in runs if r.info.status == "FINISHED"
    )
    ids = {r.data.tags.get("prunetune.trial_id") for r in runs}
    return {
        "trials_seen": len(ids),
        "runs": len(runs),
        "one_finished_run_per_trial": len(ids) == trials
        and set(finished.values()) == {1}
        and len(finished) == trials,
        "trial_retries": sum(int(r.data.tags.get(RETRIES_TAG, 0)) for r in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4, help="trials at once (default 4)")
    p.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--json-out", type=Path, help="also write the JSON result here")
    args = p.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="prunetune-load-"))
    work.mkdir(parents=True, exist_ok=True)
    server, uri = start_server(work / "mlflow", work / "mlflow-server.log")
    try:
        config = work / "load.yaml"
        config.write_text(yaml.safe_dump(experiment(args.trials, args.concurrency, work / "run")))
        wall, rss, driver_err = search(config, uri, work, work / "search.log")
        pareto_s, _ = prunetune("pareto", str(config), "--mlflow-uri", uri, "--json", cwd=work)
        report_s, _ = prunetune(
            "report", str(config), "--mlflow-uri", uri, "--out", str(work / "report"), cwd=work
        )
        runs = check_runs(uri, args.trials)
    finally:
        server.terminate()
        server.wait(timeout=60)
    server_log = (work / "mlflow-server.log").read_text(errors="replace")
    mbs = [mb for _, mb in rss]
    result = {
        "trials": args.trials,
        "concurrency": args.concurrency,
        "search_wall_s": round(wall, 1),
        "overhead_s_per_trial": round(wall / args.trials, 2),
        "pareto_s": round(pareto_s, 2),
        "report_s": round(report_s, 2),
        "readback_s_per_1000_trials": round(max(pareto_s, report_s) / args.trials * 1000, 1),
        "search_s_per_1000_trials": round(wall / args.trials * 1000),
        "driver_rss_mb_max": max(mbs, default=None),
        "driver_rss_mb_last": mbs[-1] if mbs else None,
        # bounded memory: what the second half of the search added to the first half's peak
        "driver_rss_mb_growth_2nd_half": round(
            max(mbs[len(mbs) // 2 :], default=0) - max(mbs[: len(mbs) // 2], default=0), 1
        ),
        "driver_rss_samples": rss[:: max(1, len(rss) // 50)],
        "driver_retries": driver_err.count("; retry in "),
        "server_database_locked": server_log.count("database is locked"),
        **runs,
        "work": str(work),
    }
    ok = result["trials_seen"] == args.trials and result["one_finished_run_per_trial"]
    result["ok"] = ok
    for key in (
        "trials",
        "concurrency",
        "search_wall_s",
        "overhead_s_per_trial",
        "pareto_s",
        "report_s",
        "readback_s_per_1000_trials",
        "search_s_per_1000_trials",
        "driver_rss_mb_max",
        "driver_rss_mb_last",
        "driver_rss_mb_growth_2nd_half",
        "trials_seen",
        "runs",
        "one_finished_run_per_trial",
        "driver_retries",
        "trial_retries",
        "server_database_locked",
        "ok",
    ):
        print(f"{key:<28} {result[key]}")
    line = json.dumps(result)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
