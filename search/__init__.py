"""The search over pruning schedules and the `prunetune` command line. Rooms:

- cli/: the command line. `cli/__init__` assembles the parser and reports errors;
  cli/model.py holds prune, pretrain, replay (one model, `pruning` only); cli/searching.py holds
  search, pareto, export, report; cli/options.py the options several commands share. A command
  imports Ray, MLflow and Optuna when it runs, so --help, --dry-run and config errors are quick
  (tests/test_cli_imports.py).
- config.py: the experiment YAML, validated (ExperimentConfig).
- objectives.py: what a search ranks by (val_acc, cost, latency: one registry).
- space.py: the Tune search space, the samplers and the Optuna searcher;
  optuna_searcher.py: Ray's OptunaSearch told only the trials that finished their schedule.
- tuner.py: running a search: baseline, parent MLflow run, Ray Tune, the end of the search.
- pbt.py: strategy pbt: Ray Tune's PopulationBasedTraining over stages (scheduler, mutations,
  the initial population).
- rungs.py: early stopping's registry (asha.rungs); stage_rungs.py: the `stages` scheduler.
- cluster.py: the Ray cluster a search runs on, and the resource check before any trial.
- lock.py: one search per out folder.
- callbacks.py, progress.py: progress lines and bars in the driver.
- trials.py: a search's trials read back as TrialRows (MLflow first, Ray's storage as the
  fallback); ray_storage.py reads Ray's storage format and copies missed trials into MLflow.
- pareto.py: the front and the --pick rule (pure numpy), on arrays and on TrialRows.
- export.py: one trial's files and its report.md (`prunetune export`).
- report/: the search's report: data.py (read back from MLflow), plots.py (PNGs), html.py
  (report.html).
"""
