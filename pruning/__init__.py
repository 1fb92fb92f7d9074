"""Plain PyTorch + Torch-Pruning library: models, data, schedules, exact-speed-up pruning, training.

Knows nothing of Ray or MLflow, so every piece can be called from a notebook. Rooms:

- registry.py: `Registry`, the one name -> entry map every choice is read from (importances,
  rankings, LR schedules, datasets, models, cost objectives); validate.py: the one error format
  (field, value, what is allowed, did-you-mean).
- models/: the model registry (VGG19, ResNet-56, MobileNetV2, torchvision, user factories) and
  pickle-free pruned checkpoints (`save_pruned`, `load_pruned`).
- data.py: datasets (registry), the validation split carved from train, the device-side loader.
- schedule.py: the schedule file (frozen Schedule/Stage/Training/Distill); run_info.py: its typed
  `run` section (model, data, seed, checkpoint + sha256, threads) and building the model it names.
- importance.py: channel-importance criteria; prune.py: landing on an exact MACs speed-up under the
  per-layer floor.
- train.py: the one training loop (LR schedules, distillation loss) and evaluation;
  bn_recal.py: BatchNorm statistics re-estimated after a prune; compute.py: fine-tune compute in
  TMACs and the cost objectives.
- runner.py: a schedule stage by stage (prune, time, recalibrate, evaluate, fine-tune, evaluate);
  replay.py: `prunetune replay`'s in-process run; pretrain.py: the unpruned baseline.
- devices.py: choosing the torch device.
- latency.py: measured inference latency (median and spread; CPU threads, CUDA synchronised)
  and LatencySettings, how a run times its models.
- onnx_export.py: a pruned model as one ONNX file (normalisation in its metadata), verified and
  timed in onnxruntime; onnx/onnxruntime (the optional extra `onnx`) are imported only there,
  inside its functions.
"""
