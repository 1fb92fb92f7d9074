"""The Ray boundary: what runs inside a trial, and the only code that talks to MLflow.

- point.py: TrialPoint, a trial's typed point, and the one table of search dimensions (ranges,
  reference recipe, checks of user-given points) -> its Schedule; MLflow params of a trial.
- trial.py: the Ray Tune trainable: Tune's config -> TrialPoint -> Schedule -> per stage prune,
  fine-tune, evaluate, checkpoint, `tune.report` and MLflow logging.
- tracking.py: MLflow, fenced in (trial runs, the search's parent run, reading runs back).
- lineage.py: a PBT trial's lineage (the stages run, the exploits) in its checkpoints, and the
  continuation of a donor's schedule after an exploit; the accounting fields every trial reports.
- mlflow_models.py: MLflow Models: a finished trial's pruned model logged under its run (the
  FLAVOURS registry: pytorch pt2, onnx), and `export --register`'s Model Registry versions.
"""
