"""prune, pretrain and replay: commands on one model. They touch only `pruning` (no Ray, no
MLflow); each command's options sit right above what it does."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pruning import schedule as schedule_io
from pruning.data import Dataset, DataSpec, load_dataset
from pruning.devices import resolve_device
from pruning.importance import IMPORTANCES
from pruning.latency import Latency, LatencySettings, latency_speedup, measure_batches
from pruning.models import MODELS, build_model, example_input, model_entry, save_pruned
from pruning.onnx_export import ONNX_FILE, export_pruned, failed_path, require_onnx
from pruning.pretrain import load_pretrain_config, parse_override
from pruning.pretrain import pretrain as run_pretrain
from pruning.prune import (
    MIN_CHANNEL_RATIO,
    MIN_CHANNELS,
    RANKINGS,
    ROUND_TO,
    PruneReport,
    prune_to_speedup,
)
from pruning.replay import ReplayModel, check_teacher, replay_model
from pruning.replay import replay as run_replay
from pruning.run_info import ModelInfo, RunInfo, model_from_checkpoint
from pruning.runner import StageResult
from pruning.schedule import Schedule
from pruning.train import validate
from search.cli.options import (
    add_data_args,
    add_latency_arg,
    add_onnx_arg,
    command,
    data_spec,
    say_onnx,
)
from search.progress import EpochBar, say


def add_parsers(sub: Any) -> None:
    _add_prune(sub)
    _add_pretrain(sub)
    _add_replay(sub)


def _add_prune(sub: Any) -> None:
    p = command(
        sub,
        "prune",
        "prune a model of the registry to an exact MACs speed-up and print the report",
        """
Prune a model of the registry (--arch: VGG19 by default; random-init or from a
checkpoint) to an exact MACs speed-up and print per-layer widths before and
after, MACs, params and the time taken. Coupled layers (residual adds,
depthwise groups) are pruned together. With --data, also print validation
accuracy before and right after pruning. With --onnx, also write model.onnx
beside --out, verified with onnxruntime (on 256 val images of --data, else on
seeded random inputs).
""",
        "prunetune prune --speedup 8.84 --width 0.25 --num-classes 10",
        "prunetune prune --arch resnet56 --speedup 2.5 --num-classes 10",
        "prunetune prune --arch torchvision:resnet50 --speedup 2 --input-size 64",
        "prunetune prune --speedup 8.84 --checkpoint baseline.pt --data cifar100:~/data --json",
        "prunetune prune --speedup 4 --checkpoint baseline.pt --data cifar100 --out p/pruned.pt "
        "--onnx",
    )
    add_model_args(p)
    _add_prune_target_args(p)
    _add_prune_floor_args(p)
    p.add_argument(
        "--out",
        type=Path,
        help="also write the pruned model here (structure + weights: pruning.models.load_pruned)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    add_latency_arg(p, "the dense and pruned model (median of a few runs)")
    add_onnx_arg(
        p,
        "beside --out",
        "val images of --data; without --data, on seeded random inputs and with no "
        "normalisation in the metadata",
    )
    add_data_args(p)
    p.set_defaults(handler=prune)


def _add_prune_target_args(p: argparse.ArgumentParser) -> None:
    """What `prune` prunes to, and the model's classes, input and weights."""
    p.add_argument("--speedup", type=float, required=True, help="MACs ratio to land on, e.g. 8.84")
    p.add_argument(
        "--num-classes", type=int, help="classes of the model (default: the data's, else 100)"
    )
    p.add_argument(
        "--input-size",
        type=int,
        metavar="PIXELS",
        help="side of the example input (default: the data's, else the model's: 32 for the "
        "CIFAR models, 224 for torchvision ones)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="state dict of the (unpruned) model, or a pruned model saved by prunetune",
    )


def _add_prune_floor_args(p: argparse.ArgumentParser) -> None:
    """How `prune` ranks channels, and the per-layer floor it keeps."""
    # No argparse choices for --importance: the registry's error suggests the closest name.
    p.add_argument(
        "--importance",
        default="group_norm",
        help=f"one of {', '.join(IMPORTANCES.names())} (default group_norm)",
    )
    p.add_argument("--ranking", default="global", choices=RANKINGS.names())
    p.add_argument(
        "--min-channels",
        type=int,
        default=MIN_CHANNELS,
        help=f"per-layer floor (default {MIN_CHANNELS})",
    )
    p.add_argument(
        "--min-channel-ratio",
        type=float,
        default=MIN_CHANNEL_RATIO,
        help=f"per-layer floor as a fraction of the layer's channels (default {MIN_CHANNEL_RATIO})",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=ROUND_TO,
        metavar="N",
        help=f"keep every pruned width a multiple of N, e.g. 8 (default {ROUND_TO}: any width)",
    )


def add_model_args(p: argparse.ArgumentParser, width: bool = True) -> None:
    """--arch and --kwarg (and --width): the model, named as the registry names it."""
    # No argparse choices: the registry's error suggests the closest name, and torchvision:NAME
    # and module.path:callable are open-ended.
    p.add_argument(
        "--arch",
        help=f"model: one of {', '.join(MODELS.names())}, torchvision:NAME (e.g. "
        "torchvision:resnet18) or module.path:callable (your own factory); default vgg19",
    )
    p.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of a torchvision model or your factory (repeatable; YAML value)",
    )
    if width:
        p.add_argument("--width", type=float, help="channel multiplier of the model (1.0)")


def model_info(args: argparse.Namespace, base: ModelInfo | None = None) -> ModelInfo:
    """--arch, --width, --num-classes and --kwarg on top of `base` (a file's model section)."""
    base = base or ModelInfo()
    kwargs = dict(base.kwargs) if args.arch in (None, base.arch) else {}
    for text in args.kwarg:
        path, value = parse_override(text)
        kwargs[".".join(path)] = value
    return ModelInfo(
        args.arch or base.arch,
        getattr(args, "width", None) or base.width,
        getattr(args, "num_classes", None) or base.num_classes,
        kwargs,
    )


def output_classes(model: torch.nn.Module) -> int:
    """The classes a model predicts: its last linear layer's outputs."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1].out_features if linears else -1


def check_classes(model: torch.nn.Module, num_classes: int, data: str) -> None:
    outputs = output_classes(model)
    if outputs != num_classes:
        raise ValueError(
            f"the model predicts {outputs} classes but the data has {num_classes} "
            f"({data}); pass a checkpoint trained on this data or other --data"
        )


def _model_for_prune(
    args: argparse.Namespace, num_classes: int | None, size: int | None
) -> torch.nn.Module:
    info = model_info(args)
    classes = info.num_classes or num_classes or 100
    if args.checkpoint is None:
        torch.manual_seed(0)  # a random-init model: the same weights, so the same pruning, each run
        return build_model(info.spec(classes, size))
    return model_from_checkpoint(args.checkpoint, info, classes, size)[0]


def _check_onnx(args: argparse.Namespace) -> None:
    """With --onnx, what would stop it, said before any pruning: the missing extra, no --out."""
    if not args.onnx:
        return
    require_onnx("prunetune prune --onnx")
    if args.out is None:
        raise ValueError(
            f"--onnx writes {ONNX_FILE} beside the pruned model that --out writes: pass --out "
            "too, e.g. --out runs/pruned/pruned.pt"
        )
    if args.out.name in (ONNX_FILE, failed_path(Path(ONNX_FILE)).name):
        raise ValueError(
            f"--out {args.out}: --onnx writes {ONNX_FILE} in that folder; give the pruned "
            "model another name, e.g. pruned.pt"
        )


def _onnx(args: argparse.Namespace, data: DataSpec | None, speedup: float) -> dict[str, Any]:
    """With --onnx: ONNX_FILE beside --out's pruned model, verified as `export --onnx` verifies
    (val images of --data; seeded random inputs without it) and timed on torch's threads."""
    if not args.onnx:
        return {}
    path = args.out.parent / ONNX_FILE
    say(f"writing {path} and verifying it with onnxruntime")
    return say_onnx(export_pruned(args.out, path, RunInfo(data=data), macs_speedup=speedup))


def prune(args: argparse.Namespace) -> dict[str, Any]:
    _check_onnx(args)
    device = resolve_device(args.device)
    spec = data_spec(args)
    data = load_dataset(spec, device) if spec else None
    size = args.input_size or (int(data.train.images.shape[2]) if data else None)
    model = _model_for_prune(args, data.num_classes if data else None, size).eval()
    model_spec = model.prunetune_spec
    result: dict[str, Any] = {"model": model_spec.to_dict()}
    if data is not None:
        say(f"data: {data.description}")
        check_classes(model, data.num_classes, data.description)
        result["val_acc_before"], _ = validate(model, data, device)
    dense = _latency(args, model, device)
    report = prune_to_speedup(
        model.cpu(),
        example_input(model_spec),
        args.speedup,
        importance=args.importance,
        ranking=args.ranking,
        min_channels=args.min_channels,
        min_channel_ratio=args.min_channel_ratio,
        round_to=args.round_to,
        ignored_layers=model_entry(model_spec.arch).ignored_layers(model),
    )
    if data is not None:
        result["val_acc_after_prune"], _ = validate(model, data, device)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_pruned(args.out, model.cpu(), model_spec)
    result |= _report_fields(report) | _latency_fields(dense, _latency(args, model, device))
    if not args.json:
        say(f"model: {model_spec.describe()}")
        print(format_prune_report(result))
    return result | _onnx(args, spec, report.speedup)


def _report_fields(report: PruneReport) -> dict[str, Any]:
    """What `prune` prints (and --json gives) of the prune's report."""
    return {
        "base_macs": report.base_macs,
        "macs": report.macs,
        "params": report.params,
        "params_before": report.params_before,
        "speedup": report.speedup,
        "target_speedup": report.target_speedup,
        "widths": report.widths_after,
        "widths_before": report.widths_before,
        "narrowest": report.narrowest,
        "seconds": report.seconds,
        "round_to": report.round_to,
    }


# A few runs: enough for the speed-up's first digit in a command that returns in seconds
# (experiments/bench/latency.py measures with more).
PRUNE_LATENCY = {"warmup": 3, "runs": 10}


def _latency(
    args: argparse.Namespace, model: torch.nn.Module, device: torch.device
) -> dict[int, Latency]:
    """The model's latency at batch 1 and 64 on `device` (empty with --no-latency)."""
    if not args.latency:
        return {}
    return measure_batches(
        model, example_input(model.prunetune_spec), device=device, **PRUNE_LATENCY
    )


def _latency_fields(dense: dict[int, Latency], pruned: dict[int, Latency]) -> dict[str, Any]:
    """latency_ms(_before) per batch size (median and spread) and the measured speed-up."""
    if not dense:
        return {}
    return {
        "latency_ms_before": {str(b): asdict(lat) for b, lat in dense.items()},
        "latency_ms": {str(b): asdict(lat) for b, lat in pruned.items()},
        "latency_speedup": {str(b): s for b, s in latency_speedup(dense, pruned).items()},
    }


def _latency_lines(r: dict[str, Any]) -> list[str]:
    """One line per batch size: dense -> pruned median, the measured speed-up, the spread."""
    lines = []
    for b, speedup in r.get("latency_speedup", {}).items():
        before, after = r["latency_ms_before"][b], r["latency_ms"][b]
        lines.append(
            f"latency {before['median_ms']:9.2f}ms -> {after['median_ms']:.2f}ms  "
            f"speed-up {speedup:.2f}x measured (batch {b}, {after['device']}, "
            f"{after['threads']} thread{'s' if after['threads'] > 1 else ''}, "
            f"median of {after['runs']}, IQR {after['iqr_ms']:.2f}ms)"
        )
    return lines


def format_prune_report(r: dict[str, Any]) -> str:
    w = max(12, *(len(n) for n in r["widths_before"]))  # the model's own layer names
    lines = [f"{'layer':<{w}} {'before':>7} {'after':>7} {'kept':>6}"]
    for name, before in r["widths_before"].items():
        after = r["widths"][name]
        mark = "  <- narrowest" if name == r["narrowest"] else ""
        lines.append(f"{name:<{w}} {before:>7} {after:>7} {after / before:>6.1%}{mark}")
    lines += [
        f"MACs    {r['base_macs'] / 1e6:9.2f}M -> {r['macs'] / 1e6:.2f}M  "
        f"speed-up {r['speedup']:.3f}x (target {r['target_speedup']:.3f}x"
        + (f"; widths multiples of {r['round_to']})" if r["round_to"] != ROUND_TO else ")"),
        *_latency_lines(r),
        f"params  {r['params_before'] / 1e6:9.3f}M -> {r['params'] / 1e6:.3f}M",
        f"pruned in {r['seconds']:.2f} s",
    ]
    if "val_acc_before" in r:
        lines.append(
            f"val acc {r['val_acc_before']:.2%} before -> "
            f"{r['val_acc_after_prune']:.2%} right after pruning (no fine-tune)"
        )
    return "\n".join(lines)


def _add_pretrain(sub: Any) -> None:
    p = command(
        sub,
        "pretrain",
        "train the unpruned baseline from a YAML config",
        """
Train the unpruned baseline, the config's `model: {arch, width, num_classes,
kwargs}` (VGG19 by default; --arch and --kwarg override it), with the best epoch
chosen on validation, and write baseline.pt (a plain state dict) and
metrics.json to the config's `out` folder. Shows a progress bar per epoch.
""",
        "prunetune pretrain experiments/demo.yaml",
        "prunetune pretrain experiments/demo.yaml epochs=2 data.train_subset=2000",
        "prunetune pretrain experiments/demo.yaml --arch resnet56 model.width=0.25",
    )
    add_model_args(p, width=False)
    p.add_argument("config", type=Path, help="pretrain config YAML")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. epochs=5 data.name=cifar10"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(handler=pretrain)


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    config = load_pretrain_config(args.config, args.overrides)
    if args.arch or args.kwarg:
        config = dataclasses.replace(config, model=model_info(args, config.model))
    say(f"pretraining {config.model.describe()} for {config.epochs} epochs -> {config.out}")
    bar = EpochBar([("pretrain", config.epochs)])
    try:
        metrics = run_pretrain(config, on_epoch=bar)
    finally:
        bar.close()
    say(f"data: {metrics['data']}")
    say(
        f"best val acc {metrics['val_acc']:.2%} at epoch {metrics['best_epoch']}; "
        f"{metrics['images_per_second']:.0f} img/s; checkpoint {metrics['checkpoint']}"
    )
    return metrics


def _add_replay(sub: Any) -> None:
    p = command(
        sub,
        "replay",
        "run a schedule file stage by stage",
        """
Run a schedule file in-process: per stage, prune, evaluate, fine-tune, evaluate,
with a progress bar per fine-tune. Writes pruned.pt, schedule.yaml and
metrics.json to --out after every stage. On the seed, data and thread count of
an exported trial it reproduces that trial's accuracy.
""",
        "prunetune replay runs/demo/export/schedule.yaml",
        "prunetune replay experiments/demo_schedule.yaml --checkpoint baseline.pt "
        "--data imagefolder:~/cifar10-jpeg",
    )
    p.add_argument("schedule", type=Path, help="schedule file (YAML or JSON)")
    p.add_argument(
        "--checkpoint", type=Path, help="baseline state dict (default: the file's run.checkpoint)"
    )
    p.add_argument("--width", type=float, help="width of a random-init model when no checkpoint")
    p.add_argument(
        "--arch",
        help="model of a random-init replay (default: the file's run.model.arch, else vgg19)",
    )
    p.add_argument("--seed", type=int, help="default: the file's run.seed, else 0")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: the file's run.threads)"
    )
    p.add_argument("--out", type=Path, help="output folder (default runs/replay/<schedule name>)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    add_latency_arg(p, "the dense model and each stage's pruned model (as a search's trial does)")
    add_data_args(p)
    p.set_defaults(handler=replay)


def _replay_start(
    args: argparse.Namespace, run: RunInfo | None, data: Dataset, checkpoint: str | None, seed: int
) -> ReplayModel:
    """The model the replay starts from (replay_model), its warnings said."""
    start = replay_model(
        checkpoint,
        run,
        num_classes=data.num_classes,
        width=args.width,
        seed=seed,
        arch=args.arch,
        input_size=int(data.train.images.shape[2]),
    )
    for warning in start.warnings:
        say(warning)
    if start.checkpoint is None:
        say(
            f"warning: no checkpoint given; replaying on a random-init {start.info.describe()} "
            f"from seed {seed} (accuracies show the mechanics, not a real recovery)"
        )
    check_classes(start.model, data.num_classes, data.description)
    return start


def _stage_line(schedule: Schedule) -> Callable[[StageResult], None]:
    """Says one line per finished stage of `schedule`."""

    def show(r: StageResult) -> None:
        recal = f" (BN recalibrated {r.val_acc_after_recal:.2%})" if r.bn_recal_images else ""
        say(
            f"stage {r.stage}/{len(schedule.stages)}: {r.speedup:.3f}x  "
            f"MACs {r.macs / 1e6:.2f}M  params {r.params / 1e6:.3f}M  "
            f"val acc after prune {r.val_acc_after_prune:.2%}{recal} -> after fine-tune "
            f"{r.val_acc:.2%}  compute {r.train_tmacs:.4g} TMACs{_latency_text(r)}"
        )

    return show


def _latency_text(r: StageResult) -> str:
    """'  latency 1.23ms (2.10x) at batch 1, 20.5ms (4.31x) at batch 64' (the measured speed-up
    over the dense model in brackets), or '' when latency is off."""
    if r.latency_ms is None:
        return ""
    parts = []
    for key, ms in r.latency.items():
        if key.startswith("latency_ms_b"):
            b = key.removeprefix("latency_ms_b")
            speedup = r.latency.get(f"latency_speedup_b{b}")
            parts.append(
                f"{ms:.2f}ms" + (f" ({speedup:.2f}x)" if speedup else "") + f" at batch {b}"
            )
    return "  latency " + ", ".join(parts)


def _epoch_bar(schedule: Schedule) -> EpochBar:
    phases = [("sparse training", schedule.sparse.epochs if schedule.sparse else 0)]
    phases += [(f"stage {i + 1} fine-tune", s.epochs) for i, s in enumerate(schedule.stages)]
    return EpochBar(phases)


def replay(args: argparse.Namespace) -> dict[str, Any]:
    schedule, run = schedule_io.load(args.schedule)
    device = resolve_device(args.device)
    spec = data_spec(args, run.data if run and run.data else DataSpec())
    assert spec is not None
    seed = args.seed if args.seed is not None else (run.seed if run else 0)
    # A trial's weights depend on the thread count (gradient sums reduce in a different order),
    # so a replay uses the one its trial ran with unless told otherwise.
    threads = args.threads or (run.threads if run else None)
    if threads:
        torch.set_num_threads(int(threads))
    checkpoint = str(args.checkpoint) if args.checkpoint else (run.checkpoint if run else None)
    check_teacher(schedule, checkpoint)
    data = load_dataset(spec, device)
    start = _replay_start(args, run, data, checkpoint, seed)
    out = (args.out or Path("runs/replay") / args.schedule.stem).expanduser().resolve()
    say(f"data: {data.description}")
    say(f"schedule: {schedule.summary()} -> {out}")
    bar = _epoch_bar(schedule)
    try:
        metrics = run_replay(
            schedule,
            start.model,
            data,
            out=out,
            device=device,
            seed=seed,
            run=start.run_info(spec, seed, torch.get_num_threads()),
            on_stage=_stage_line(schedule),
            on_epoch=bar,
            latency=LatencySettings() if args.latency else None,
        )
    finally:
        bar.close()
    say(
        f"baseline val acc {metrics['base_val_acc']:.2%}; final {metrics['val_acc']:.2%} at "
        f"{metrics['speedup']:.3f}x in {metrics['wall_seconds']:.0f} s; wrote {out}"
    )
    return metrics | {"out": str(out), "data_spec": asdict(spec)}
