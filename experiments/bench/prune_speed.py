"""Time prunetune's one-shot prune against Torch-Pruning's progressive pruning, on one model.

Any registry model: `--arch vgg19` (the default), `resnet56`, `mobilenet_v2`,
`torchvision:resnet50` (224x224 unless `--input-size`), a user `module:callable`.

The reference is `progressive_pruning` from Torch-Pruning's `reproduce/main.py`: a global
BasePruner with group L2-norm importance and 400 iterative steps of 1/400 of the channels each,
recounting MACs after every step until the speed-up is reached. prunetune's `prune_to_speedup`
runs with its default channel floor and with the floor off (the reference has none).

    PYTHONPATH=. python experiments/bench/prune_speed.py --width 0.25 --json-out out.json
    PYTHONPATH=. python experiments/bench/prune_speed.py --arch resnet56 --num-classes 10 \
        --speedup 2.55
    PYTHONPATH=. python experiments/bench/prune_speed.py --arch torchvision:resnet50 \
        --num-classes 1000 --speedup 2.0
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from pruning.models import ModelSpec, build_model
from pruning.prune import prune_to_speedup


def reference_progressive(model: nn.Module, example_inputs: torch.Tensor, speedup: float) -> None:
    """Torch-Pruning reproduce/main.py: step 1/400 of the channels until base/MACs >= speedup."""
    base_macs, _ = tp.utils.count_ops_and_params(model, example_inputs=example_inputs)
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        iterative_steps=400,
        pruning_ratio=1.0,
        max_pruning_ratio=1.0,
        global_pruning=True,
        ignored_layers=[output_layer(model, example_inputs)],
    )
    current = 1.0
    while current < speedup and pruner.current_step < pruner.iterative_steps:
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example_inputs=example_inputs)
        current = base_macs / macs


def output_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The last conv/linear layer to run (the classes), which neither method may prune."""
    order: list[nn.Module] = []
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in layers]
    with torch.no_grad():
        model(example_inputs)
    for h in hooks:
        h.remove()
    return order[-1]


def run_method(
    name: str, prune, model: nn.Module, inputs: torch.Tensor, base_macs: int, speedup: float
) -> dict:
    """Prune a deep copy of `model` with `prune(model, inputs, speedup)`; time and measure it."""
    model = copy.deepcopy(model).eval()
    start = time.perf_counter()
    prune(model, inputs, speedup)
    seconds = time.perf_counter() - start
    macs, params = tp.utils.count_ops_and_params(model, example_inputs=inputs)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    narrowest = min(widths, key=widths.get)
    achieved = base_macs / macs
    return {
        "method": name,
        "seconds": seconds,
        "speedup": achieved,
        "error_pct": 100.0 * (achieved / speedup - 1.0),
        "macs": int(macs),
        "params": int(params),
        "narrowest": narrowest,
        "narrowest_width": widths[narrowest],
        "first_conv_width": next(iter(widths.values())),
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_pruning": importlib.metadata.version("torch-pruning"),
    }


def print_table(rows: list[dict], speedup: float) -> None:
    ref = rows[0]["seconds"] if rows[0]["method"].startswith("reference") else math.nan
    print(
        f"{'method':<24}{'seconds':>9}{'speed-up':>10}{'err %':>8}{'MACs (M)':>10}"
        f"{'params (M)':>11}{'1st conv':>9}  {'narrowest':<24}{'ref/this':>9}"
    )
    for r in rows:
        print(
            f"{r['method']:<24}{r['seconds']:>9.2f}{r['speedup']:>10.3f}{r['error_pct']:>+8.2f}"
            f"{r['macs'] / 1e6:>10.2f}{r['params'] / 1e6:>11.3f}{r['first_conv_width']:>9}  "
            f"{r['narrowest'] + '=' + str(r['narrowest_width']):<24}{ref / r['seconds']:>9.1f}"
        )
    print(f"target speed-up {speedup:.3f}x; ref/this = reference seconds / this method's seconds")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg19", help="a model registry name (pruning.models)")
    p.add_argument("--input-size", type=int, default=None, help="pixels per side")
    p.add_argument("--speedup", type=float, default=8.84)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="time prunetune only (the reference's 400 "
        "recounts take tens of minutes on large models)",
    )
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    spec = ModelSpec(
        args.arch, num_classes=args.num_classes, width=args.width, input_size=args.input_size
    )
    model = build_model(spec).eval()
    inputs = torch.randn(1, 3, spec.size, spec.size)
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs=inputs)
    info = machine()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    print(
        f"{spec.describe()}, seed {args.seed}: "
        f"{base_macs / 1e6:.2f}M MACs, {base_params / 1e6:.3f}M params"
    )
    methods = [
        ("reference (400 steps)", reference_progressive),
        ("prunetune (floor)", lambda m, x, s: prune_to_speedup(m, x, s)),
        (
            "prunetune (no floor)",
            lambda m, x, s: prune_to_speedup(m, x, s, min_channels=1, min_channel_ratio=0.0),
        ),
    ]
    methods = methods[1:] if args.no_reference else methods
    rows = [run_method(n, f, model, inputs, base_macs, args.speedup) for n, f in methods]
    print_table(rows, args.speedup)
    if args.json_out:
        result = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": info,
            "base_macs": int(base_macs),
            "base_params": int(base_params),
            "results": rows,
        }
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
