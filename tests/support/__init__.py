"""What the tests share, so that no test imports from another test file.

- `experiment`: the tiny search experiment (VGG19 at 1/8 width on generated data) that the
  search, cluster and UI tests vary.
- `procs`: the repository root, the environment a child `python` needs, `prunetune` run as a
  user would, free ports, and stopping a process with everything it spawned.
- `polling`: wait for a condition with a timeout, instead of sleeping a fixed time.
- `ray_nodes`: real `ray start` head and worker nodes on loopback.
- `mlflow_server`: a real `mlflow server`, and a search's runs read back by role.
- `run_checks`: assertions on the MLflow runs of a search.
- `trial_rows`: a TrialRow as MLflow would give it back.
- `tiny`: the seeded 1/8-width VGG19 and generated 4-class data the runner-level tests train.

The fixtures built on these (`ray_cluster`, `mlflow_server`) are in tests/conftest.py.
"""
