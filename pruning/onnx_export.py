"""A pruned model as a deployable ONNX file, verified with onnxruntime.

The file is one self-contained ONNX model (weights inside, no external-data file) written by
torch's exporter (`torch.onnx.export(dynamo=True)`, at that exporter's default opset, the
current one for the installed torch), with:
  - one input `images`, float32 (batch, 3, H, W), RGB, normalised as the model was trained:
    `x = (pixel / 255 - mean) / std` per channel; the batch dimension is dynamic;
  - one output `logits`, float32 (batch, num_classes);
  - metadata_props stating that normalisation (mean, std, image size), the class count and
    names, and the prunetune model spec and MACs speed-up (`model_metadata`).

Verification runs the file in onnxruntime on 256 validation images of the trial's own data
(the schedule file's `run.data`, its val split) and compares against torch: the largest
absolute logit difference must stay within `tolerance()` and the top-1 class must be equal on
every image. A file that fails is kept for inspection, renamed `<name>.failed.onnx`, and
OnnxVerificationError is raised. When the data cannot be read, the check runs on 256 seeded
random inputs instead and says so (the metadata then has no normalisation).

onnx, onnxruntime and onnxscript are the optional extra `onnx` (`pip install 'prunetune[onnx]'`);
they are imported inside the functions that need them, never when this module is imported.
`onnx_bytes` is the reusable piece: a model's ONNX file as bytes.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.data import BatchLoader, DataSpec, load_dataset
from pruning.latency import BATCHES, Latency, Timer, measure, summarize
from pruning.models import ModelSpec, example_input, load_pruned
from pruning.run_info import RunInfo
from pruning.validate import positive_int

INSTALL_HINT = "pip install 'prunetune[onnx]'"
ONNX_FILE = "model.onnx"  # what the commands write beside the pruned model
# onnxscript: torch's exporter translates to ONNX with it; onnxruntime: the verification
_EXTRA_MODULES = ("onnx", "onnxscript", "onnxruntime")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CHECK_IMAGES = 256
RELATIVE_TOLERANCE = 1e-3  # of the largest |torch logit| (at least 1): float32 kernels differ
LATENCY_WARMUP = 5
LATENCY_RUNS = 30  # fewer than pruning.latency.RUNS: an export times 2 runtimes x 2 batches
_EXPORT_BATCH = 2  # torch.export specialises a dynamic dimension seen as 1 to a constant


class MissingExtraError(RuntimeError):
    """The optional extra `onnx` is not installed."""


class OnnxVerificationError(RuntimeError):
    """The ONNX file does not compute what the torch model computes."""


def require_onnx(feature: str = "the ONNX export") -> None:
    """Raise MissingExtraError naming what is missing and how to install it; nothing else."""
    missing = []
    for name in _EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"{feature} needs the optional extra 'onnx' ({', '.join(missing)} not installed): "
            f"{INSTALL_HINT}"
        )


# --- export --------------------------------------------------------------------------------------


def onnx_bytes(
    model: nn.Module, metadata: Mapping[str, str] | None = None, example: torch.Tensor | None = None
) -> bytes:
    """`model` (eval mode) as the bytes of one ONNX file with a dynamic batch dimension.

    `example` is one input (1, 3, H, W); by default the model registry's (`example_input`), so
    any model built by pruning.models (load_pruned included) needs none. `metadata` goes into
    the file's metadata_props (see `model_metadata`). Raises MissingExtraError without the extra.
    """
    require_onnx()
    import onnx

    example = example_input(model) if example is None else example
    device = next(model.parameters()).device  # a model trained on a GPU exports from there
    x = example[:1].expand(_EXPORT_BATCH, *example.shape[1:]).contiguous().to(device)
    was_training = model.training
    model.eval()
    try:
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            external_data=False,  # the weights inside the one file (fine below 2 GB)
            verbose=False,
        )
    finally:
        model.train(was_training)
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    if metadata:
        onnx.helper.set_model_props(proto, dict(metadata))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def write_onnx(
    path: str | Path,
    model: nn.Module,
    metadata: Mapping[str, str] | None = None,
    example: torch.Tensor | None = None,
) -> Path:
    """onnx_bytes() written to `path` (unverified; `export_pruned` verifies)."""
    path = Path(path)
    path.write_bytes(onnx_bytes(model, metadata, example))
    return path


def opset(data: bytes | Path) -> int:
    """The default-domain ONNX opset a file was written at."""
    import onnx

    proto = onnx.load_from_string(data) if isinstance(data, bytes) else onnx.load(str(data))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# --- what the file states about its input --------------------------------------------------------


@dataclass(frozen=True)
class CheckInputs:
    """Validation images for the check, normalised as in training, and where they came from."""

    images: torch.Tensor  # (N, 3, H, W) float32, normalised
    source: str  # one line: "256 val images of cifar10 (...)" or "256 seeded random inputs"
    mean: tuple[float, float, float] | None  # [0, 1] units; None: the data were not read
    std: tuple[float, float, float] | None
    classes: tuple[str, ...] = ()
    note: str = ""  # why the data were not used, for the user; "" when they were


def check_inputs(run: RunInfo | None, spec: ModelSpec, count: int = CHECK_IMAGES) -> CheckInputs:
    """The first `count` images of the run's val split; seeded random inputs with a note when
    the run names no data or its data cannot be read."""
    positive_int("count", count, minimum=1)
    if run is None or run.data is None:
        # a schedule file without run.data, or `prunetune prune` without --data
        return _random_inputs(spec, count, "no data was given (run.data, or prune's --data)")
    try:
        data = load_dataset(run.data)
    except (OSError, ValueError, RuntimeError) as err:  # missing/damaged files, bad split
        return _random_inputs(spec, count, f"its data could not be read ({err})")
    loader = BatchLoader(data.val, count, data.mean, data.std, augment=False, shuffle=False)
    images, _ = next(iter(loader))
    return CheckInputs(
        images=images,
        source=f"{len(images)} val images of {_data_name(run.data)}",
        mean=data.mean,
        std=data.std,
        classes=tuple(data.classes),
    )


def _data_name(spec: DataSpec) -> str:
    return spec.name if spec.root is None else f"{spec.name} at {spec.root}"


def _random_inputs(spec: ModelSpec, count: int, why: str) -> CheckInputs:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn((count, 3, spec.size, spec.size), generator=gen)  # like normalised data
    return CheckInputs(
        images=images,
        source=f"{count} seeded random inputs",
        mean=None,
        std=None,
        note=f"{why}: the ONNX check runs on {count} seeded random inputs instead, and the "
        "file's metadata states no normalisation",
    )


def model_metadata(
    spec: ModelSpec, inputs: CheckInputs, macs_speedup: float | None = None
) -> dict[str, str]:
    """metadata_props for the ONNX file: how to feed it and what it is (all values strings)."""
    props = {
        "prunetune.version": _version(),
        "prunetune.arch": spec.arch,
        "prunetune.model_spec": json.dumps(spec.to_dict(), sort_keys=True),
        "input": f"{INPUT_NAME}: float32 (batch, 3, {spec.size}, {spec.size}), RGB, NCHW",
        "image_size": str(spec.size),
        "num_classes": str(spec.num_classes),
        "output": f"{OUTPUT_NAME}: float32 (batch, {spec.num_classes}), before softmax",
    }
    if macs_speedup is not None:
        props["prunetune.macs_speedup"] = f"{macs_speedup:.4f}"
    if inputs.mean is not None and inputs.std is not None:
        props |= {
            "normalization": "x = (pixel / 255 - mean) / std, per channel (R, G, B)",
            "mean": json.dumps(list(inputs.mean)),
            "std": json.dumps(list(inputs.std)),
        }
    else:
        props["normalization"] = "unknown: the training data could not be read at export"
    if inputs.classes:
        props["classes"] = json.dumps(list(inputs.classes))
    return props


def _version() -> str:
    try:
        return importlib_metadata.version("prunetune")
    except importlib_metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


# --- verification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    images: int
    source: str
    max_abs_diff: float  # largest |ORT logit - torch logit| over all images and classes
    tolerance: float
    top1_mismatches: int  # images whose ORT top-1 class differs from torch's

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_mismatches == 0

    def describe(self) -> str:
        return (
            f"on {self.source}: max |logit difference| {self.max_abs_diff:.3g} "
            f"(tolerance {self.tolerance:.3g}), top-1 equal on "
            f"{self.images - self.top1_mismatches}/{self.images}"
        )


def tolerance(torch_logits: torch.Tensor) -> float:
    """RELATIVE_TOLERANCE of the largest |logit| (at least 1): float32 kernels round differently."""
    return RELATIVE_TOLERANCE * max(1.0, float(torch_logits.abs().max()))


def session(data: bytes | Path, threads: int) -> Any:
    """An onnxruntime CPU session on `threads` intra-op threads (one inter-op: sequential)."""
    require_onnx("the ONNX verification")
    import onnxruntime as ort

    positive_int("threads", threads, minimum=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    model = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def verify(
    data: bytes | Path, model: nn.Module, images: torch.Tensor, source: str = "", batch: int = 64
) -> Verification:
    """Run the ONNX file and the torch model on `images` (N, 3, H, W) and compare their logits."""
    ort_session = session(data, torch.get_num_threads())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = torch.cat([model(x) for x in images.split(batch)])
    finally:
        model.train(was_training)
    got = torch.cat(
        [
            torch.from_numpy(ort_session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
            for x in images.split(batch)
        ]
    )
    if got.shape != expected.shape:
        raise OnnxVerificationError(
            f"the ONNX file gives logits of shape {tuple(got.shape)}, torch {tuple(expected.shape)}"
        )
    return Verification(
        images=len(images),
        source=source or f"{len(images)} inputs",
        max_abs_diff=float((got - expected).abs().max()),
        tolerance=tolerance(expected),
        top1_mismatches=int((got.argmax(1) != expected.argmax(1)).sum()),
    )


def failed_path(path: Path) -> Path:
    """Where a file that failed verification is kept: model.onnx -> model.failed.onnx."""
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def save_verified(
    path: str | Path, data: bytes, model: nn.Module, inputs: CheckInputs
) -> Verification:
    """Write `data` to `path` and verify it against `model`. On failure the file is kept as
    failed_path(path) and OnnxVerificationError says what differed."""
    path = Path(path)
    path.write_bytes(data)
    failed_path(path).unlink(missing_ok=True)  # a failure of an earlier export, now stale
    try:
        result = verify(path, model, inputs.images, inputs.source)
        if not result.ok:
            raise OnnxVerificationError(
                f"the ONNX file does not match the torch model {result.describe()}"
            )
    except OnnxVerificationError as err:
        kept = path.rename(failed_path(path))
        raise OnnxVerificationError(f"{err}; kept for inspection as {kept}") from None
    return result


# --- latency -------------------------------------------------------------------------------------


def measure_ort(
    ort_session: Any,
    example: torch.Tensor,
    batch: int,
    *,
    threads: int,
    warmup: int = LATENCY_WARMUP,
    runs: int = LATENCY_RUNS,
    timer: Timer = time.perf_counter,
) -> Latency:
    """onnxruntime's latency timed as pruning.latency.measure times torch: zeros of `batch`
    inputs, `warmup` untimed runs, then the median and spread of `runs` timed ones. The session
    must have been made with `threads` intra-op threads (`session`)."""
    positive_int("batch", batch, minimum=1)
    positive_int("runs", runs, minimum=2)
    positive_int("warmup", warmup)
    x = {INPUT_NAME: torch.zeros((batch, *example.shape[1:]), dtype=example.dtype).numpy()}
    for _ in range(warmup):
        ort_session.run([OUTPUT_NAME], x)
    times = []
    for _ in range(runs):
        start = timer()
        ort_session.run([OUTPUT_NAME], x)
        times.append((timer() - start) * 1e3)
    return summarize(times, batch, threads, "cpu (onnxruntime)")


@dataclass(frozen=True)
class LatencyPair:
    """torch and onnxruntime on the same CPU threads, the same batch (milliseconds per batch)."""

    torch: Latency
    ort: Latency

    def describe(self) -> str:
        t, o = self.torch, self.ort
        return (
            f"batch {t.batch}: torch {t.median_ms:.3g} ms (IQR {t.iqr_ms:.2g}), "
            f"onnxruntime {o.median_ms:.3g} ms (IQR {o.iqr_ms:.2g}), "
            f"onnxruntime at {t.median_ms / o.median_ms:.2f}x torch's speed"
        )


def compare_latency(
    model: nn.Module,
    data: bytes | Path,
    threads: int,
    batches: Sequence[int] = BATCHES,
    *,
    warmup: int = LATENCY_WARMUP,
    runs: int = LATENCY_RUNS,
) -> dict[int, LatencyPair]:
    """torch (pruning.latency.measure) and onnxruntime timed alike at each batch size."""
    example = example_input(model)
    ort_session = session(data, threads)
    pairs = {}
    for b in batches:
        t = measure(model, example, b, threads=threads, warmup=warmup, runs=runs)
        o = measure_ort(ort_session, example, b, threads=threads, warmup=warmup, runs=runs)
        pairs[b] = LatencyPair(t, o)
    return pairs


# --- the whole export ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    verification: Verification
    latency: dict[int, LatencyPair]
    note: str  # why the check did not use the data; "" when it did

    def report_line(self) -> str:
        """One line of report.md."""
        speed = "; ".join(p.describe() for p in self.latency.values())
        stated = "no normalisation" if self.note else "normalisation"
        return (
            f"- ONNX: `{self.path.name}` (opset {self.opset}, dynamic batch, {stated} in its "
            f"metadata), verified with onnxruntime {self.verification.describe()}"
            + (f"; latency on {_threads(self.latency)} CPU threads, {speed}" if speed else "")
            + (f" ({self.note})" if self.note else "")
        )

    def to_dict(self) -> dict[str, Any]:
        v = self.verification
        return {
            "path": str(self.path),
            "opset": self.opset,
            "check_images": v.images,
            "check_source": v.source,
            "max_abs_logit_diff": v.max_abs_diff,
            "tolerance": v.tolerance,
            "top1_mismatches": v.top1_mismatches,
            "latency_ms": {
                b: {"torch": p.torch.median_ms, "onnxruntime": p.ort.median_ms}
                for b, p in self.latency.items()
            },
        }


def _threads(latency: Mapping[int, LatencyPair]) -> int:
    return next(iter(latency.values())).torch.threads


def export_pruned(
    pruned: str | Path,
    path: str | Path,
    run: RunInfo | None,
    *,
    macs_speedup: float | None = None,
    batches: Sequence[int] = BATCHES,
    warmup: int = LATENCY_WARMUP,
    runs: int = LATENCY_RUNS,
) -> OnnxExport:
    """The pruned-model file `pruned` (save_pruned) as a verified ONNX file at `path`, timed in
    torch and onnxruntime on the run's CPU threads (run.threads, else torch's current count)."""
    require_onnx()
    model = load_pruned(pruned).eval()
    spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
    inputs = check_inputs(run, spec)
    data = onnx_bytes(model, model_metadata(spec, inputs, macs_speedup))
    verification = save_verified(path, data, model, inputs)
    threads = run.threads if run is not None and run.threads else torch.get_num_threads()
    latency = compare_latency(model, Path(path), threads, batches, warmup=warmup, runs=runs)
    return OnnxExport(Path(path), opset(data), verification, latency, inputs.note)
