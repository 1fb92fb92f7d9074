"""experiments/bench/search_strategies.py (issue 12's benchmark): the budget arithmetic, the
anytime-curve reading and the RESULTS.md section are checked here; the whole pipeline (every
registered strategy's search stopped at its budget, export, replay, report) runs as --smoke on
generated JPEGs in the slow test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import ROOT, subprocess_env

from experiments.bench import search_strategies as bench
from experiments.bench import search_strategies_report as report
from search.strategies import STRATEGIES


def test_pbt_trial_units_one_stage_is_one_full_trial_and_more_stages_cost_more() -> None:
    assert bench.pbt_trial_units(8.84, 1) == pytest.approx(1.0)
    # 2 stages: 2.97x (a model 8.84/2.97 times the final's MACs) then 8.84x, half the epochs each
    assert bench.pbt_trial_units(8.84, 2) == pytest.approx((8.84**0.5 + 1) / 2)
    assert bench.pbt_trial_units(8.84, 3) > bench.pbt_trial_units(8.84, 2)


def test_an_arm_is_a_strategy_plus_the_keys_it_adds_and_early_stopping_gets_more_trials() -> None:
    from types import SimpleNamespace

    import yaml

    c = yaml.safe_load((ROOT / "experiments" / "bench" / "search_strategies.yaml").read_text())
    b = SimpleNamespace(c=c)
    b.arm = lambda name: bench.Bench.arm(b, name)
    b.strategy = lambda name: bench.Bench.strategy(b, name)
    assert b.arm("tpe") == {"strategy": "tpe"}
    arm = b.arm("tpe+stage_rungs")
    assert arm["strategy"] == "tpe" and arm["asha"]["rungs"] == "stages"
    plain, stopped = bench.Bench.trials(b, "tpe"), bench.Bench.trials(b, "tpe+stage_rungs")
    assert stopped > plain
    # the same start-up count as plain tpe's default, so only the early stopping differs
    from search.strategies import default_startup

    assert arm["n_startup_trials"] == default_startup(plain)


def _search(curve: list[tuple[float, float]]) -> report.Search:
    return report.Search("random", 0, curve, 10.0, 60.0, 8.0, 1.0, 0.5, 0.5)


def test_best_at_and_reaches_read_the_curve_as_a_step_function() -> None:
    s = _search([(1.5, 0.40), (3.0, 0.55), (9.0, 0.60)])
    assert s.best_at(1.0) is None  # nothing finished yet
    assert s.best_at(8.0) == 0.55  # the budget: the 9-TMAC trial is past it
    assert s.reaches(0.5) == 3.0
    assert s.reaches(0.7) is None


def test_section_is_replaced_between_markers_and_appended_once(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Other\ntext\n")
    report.write_section(path, f"{report.BEGIN}\nfirst\n{report.END}")
    report.write_section(path, f"{report.BEGIN}\nsecond\n{report.END}")
    text = path.read_text()
    assert text.count(report.BEGIN) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Benchmark results\n\n## Other\ntext\n")


@pytest.mark.slow
def test_smoke_runs_every_registered_strategy_end_to_end(tmp_path: Path) -> None:
    script = ROOT / "experiments" / "bench" / "search_strategies.py"
    env = subprocess_env(OMP_NUM_THREADS="1")
    for step in ("run", "report"):
        subprocess.run(
            [sys.executable, str(script), step, "--smoke", "--out", str(tmp_path / "b")],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=1200,
        )
    out = tmp_path / "b_smoke"
    names = [s for s in ("random", "tpe", "pbt") if s in STRATEGIES] + ["tpe+stage_rungs"]
    text = (out / "report" / "RESULTS.md").read_text()
    assert report.BEGIN in text and "Where it falls short" in text
    assert (out / "report" / report.FIGURE).stat().st_size > 0
    for name in names:
        folder = out / "searches" / f"{name}_s0"
        replay = json.loads((folder / "replay" / "metrics.json").read_text())
        assert replay["completed"] == 1.0
        assert replay["speedup"] == pytest.approx(8.84, rel=0.02)
        assert 0.0 <= json.loads((folder / "replay" / "test.json").read_text())["test_acc"] <= 1
        assert (out / "report" / report.MODELS / name / "pruned.pt").is_file()
        assert f"| {name} | 1 |" in text
    # random and tpe were stopped at the budget: their accounted compute reached it
    for name in ("random", "tpe", "tpe+stage_rungs"):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} | 0 |"))
        spent = float(row.split("|")[5])
        assert math.isfinite(spent) and spent > 0
