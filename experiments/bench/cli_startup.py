"""How long `prunetune` takes to answer when it computes nothing: `--help`, `search --dry-run`,
and a config error. Each command is timed end to end (a fresh interpreter, as a user runs it),
next to two references: `python -c pass` (the interpreter alone) and `python -c "import torch"`
(the floor while the parser reads the model registries, which import torch). Prints the median
wall time of --repeats runs and its ratio to `import torch`.

With --compare DIR (another checkout, e.g. `git worktree add ../before <commit>`), each
command also runs from DIR, interleaved with this tree's runs so that both see the same load,
and the ratio this tree / DIR is printed.

    PYTHONPATH=. python experiments/bench/cli_startup.py
    PYTHONPATH=. python experiments/bench/cli_startup.py --compare ../before --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/demo_search.yaml"  # relative to the checkout it runs in
REFERENCES = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}
COMMANDS = {
    "prunetune --help": ["-m", "search.cli", "--help"],
    "prunetune search --dry-run": ["-m", "search.cli", "search", EXPERIMENT, "--dry-run"],
    "prunetune search (config error)": [
        "-m",
        "search.cli",
        "search",
        EXPERIMENT,
        "target_speedup=-1",
    ],
}
EXPECTED_RC = {"prunetune search (config error)": 2}  # a config error exits 2; the others 0


def run_once(tree: Path, argv: list[str], expected_rc: int) -> float:
    """Wall seconds of `python ARGV` run in `tree` with it first on the path."""
    env = os.environ | {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != expected_rc:
        raise SystemExit(
            f"{' '.join(argv)} in {tree} exited {done.returncode}, not {expected_rc}:\n"
            f"{done.stderr[-2000:]}"
        )
    return seconds


def medians(trees: list[Path], repeats: int) -> dict[str, list[float]]:
    """Median seconds per command and tree; the trees take turns within each repeat."""
    times: dict[str, list[list[float]]] = {
        name: [[] for _ in trees] for name in (*REFERENCES, *COMMANDS)
    }
    for _ in range(repeats):
        for name, argv in (REFERENCES | COMMANDS).items():
            for i, tree in enumerate(trees):
                times[name][i].append(run_once(tree, argv, EXPECTED_RC.get(name, 0)))
    return {name: [statistics.median(t) for t in per_tree] for name, per_tree in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per command (median)")
    p.add_argument("--compare", type=Path, help="another checkout to time the same commands in")
    args = p.parse_args()
    trees = [ROOT] + ([args.compare.resolve()] if args.compare else [])
    result = medians(trees, args.repeats)
    torch_s = result["python -c 'import torch'"]
    header = f"{'command':<34} {'this tree':>10} {'/ torch':>8}"
    if args.compare:
        header += f" {'compare':>10} {'/ torch':>8} {'this/compare':>13}"
    print(f"median of {args.repeats} runs, seconds (torch: python -c 'import torch')")
    print(header)
    for name, seconds in result.items():
        line = f"{name:<34} {seconds[0]:>10.2f} {seconds[0] / torch_s[0]:>7.2f}x"
        if args.compare:
            line += f" {seconds[1]:>10.2f} {seconds[1] / torch_s[1]:>7.2f}x"
            line += f" {seconds[0] / seconds[1]:>12.2f}x"
        print(line)


if __name__ == "__main__":
    main()
