"""Plain PyTorch + Torch-Pruning library: VGG19, data, schedules, exact-speed-up pruning, training.

Knows nothing of Ray or MLflow, so every piece can be called from a notebook.
"""
