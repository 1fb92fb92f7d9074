"""Land a model on an exact MACs speed-up with Torch-Pruning's dependency graph, in one prune.

Torch-Pruning's benchmark reaches a speed-up by 400 micro-steps with a MACs recount after each
(100-250 s for VGG19 on a 2-core CPU, and it overshoots). Here the importance of every channel is
scored once, a MACs model predicts the cost of any set of per-layer widths, a bisection over the
ranking threshold finds the widths that land on the target, and the model is pruned once. A real
recount checks the landing and, in the rare case the prediction was off, prunes a little more.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pruning.importance import IMPORTANCES, make_importance
from pruning.models import layer_widths, model_entry
from pruning.registry import Registry
from pruning.validate import positive_int

TOLERANCE = 0.01  # the landing must be within +-1% of the requested MACs ratio
MAX_PRUNES = 3  # one prune lands; the others only run if the MACs model was off
# The per-layer floor's defaults: a layer keeps at least max(MIN_CHANNELS, ceil(MIN_CHANNEL_RATIO
# * its original channels)). Torch-Pruning has none; without it global ranking cuts VGG19's first
# convolutions to 1-4 channels.
MIN_CHANNELS = 4
MIN_CHANNEL_RATIO = 0.1
# Widths a pruned group may keep: multiples of round_to (1: any width, Torch-Pruning's default).
# Channel counts that are multiples of 8 or 16 fill SIMD lanes and tensor-core tiles, so they can
# run faster than the same MACs at odd widths. A group narrower than round_to, or whose width is
# not a multiple of it, may also stay whole (it is never widened).
ROUND_TO = 1


@dataclass(frozen=True)
class PruneReport:
    base_macs: int  # MACs of the original, unpruned model (the speed-up's reference)
    macs_before: int
    macs: int
    params_before: int
    params: int
    target_speedup: float
    speedup: float  # achieved: base_macs / macs
    widths_before: dict[str, int]  # out channels per conv/linear layer
    widths_after: dict[str, int]
    original_widths: dict[str, int]
    narrowest: str  # the layer with the lowest kept fraction of its original channels
    seconds: float
    # Every pruned group's width is a multiple of it. Above 1 the landing is the closest the
    # planner finds at that granularity, which near the floor's limit of a small model may be
    # more than TOLERANCE from target_speedup (speedup says where it landed).
    round_to: int = ROUND_TO

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def round_up(channels: int, round_to: int) -> int:
    """The smallest multiple of round_to that is >= channels."""
    return -(-channels // round_to) * round_to


def channel_floor(
    original: int, min_channels: int, min_channel_ratio: float, round_to: int = ROUND_TO
) -> int:
    """The fewest channels a layer of `original` channels may keep: the floor rounded up to a
    multiple of round_to, never more than `original` (a layer narrower than round_to, or cut
    to its floor's multiple past its width, keeps every channel)."""
    floor = max(min_channels, math.ceil(min_channel_ratio * original), 1)
    return min(original, round_up(floor, round_to))


def layer_floors(
    original_widths: dict[str, int],
    min_channels: int,
    min_channel_ratio: float,
    round_to: int = ROUND_TO,
) -> dict[str, int]:
    """The fewest output channels each layer may keep, by module name."""
    return {
        n: channel_floor(c, min_channels, min_channel_ratio, round_to)
        for n, c in original_widths.items()
    }


def speedup_cap(min_channel_ratio: float) -> float:
    """About the largest speed-up a ratio floor allows: 1 / ratio^2, since a conv's MACs scale
    with in x out channels. Infinite without a ratio floor. It stays an upper bound at any
    round_to (rounding only raises floors); floor_speedup gives a model's own cap with it."""
    return math.inf if min_channel_ratio <= 0 else 1.0 / min_channel_ratio**2


# Modules tp.utils.count_ops_and_params counts beyond conv/linear/BN: it counts their output's
# elements (activations, upsampling) or their input's (pooling), so both scale with channels.
_COUNTED_BY_OUTPUT = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.Upsample)
_COUNTED_BY_INPUT = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)


class _Trace:
    """One hooked forward: what the MACs model and the group search need from the model.

    `positions`: each conv/linear/BN layer's output elements per channel (H*W, or tokens);
    `calls`: each counted activation/pooling call fed by a layer (directly, or through other
    such calls) as (that layer, counted elements per channel); `output_layer`: the last
    conv/linear layer to run, whose outputs are the classes.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        self.positions: dict[nn.Module, int] = {}
        self.calls: list[tuple[nn.Module, int]] = []
        order: list[nn.Module] = []
        # id(tensor) -> (tensor, the layer it comes from): held so its id is not reused.
        tagged: dict[int, tuple[torch.Tensor, nn.Module]] = {}

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                self.positions[module] = _per_channel(output)
                layer: nn.Module | None = module
                if not isinstance(module, nn.BatchNorm2d):
                    order.append(module)
            else:
                source = tagged.get(id(inputs[0]))
                layer = source[1] if source is not None and source[0] is inputs[0] else None
                if layer is not None:
                    counted = output if isinstance(module, _COUNTED_BY_OUTPUT) else inputs[0]
                    self.calls.append((layer, _per_channel(counted)))
            if layer is not None and isinstance(output, torch.Tensor):
                tagged[id(output)] = (output, layer)

        kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, *_COUNTED_BY_OUTPUT, *_COUNTED_BY_INPUT)
        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
        try:
            with torch.no_grad():
                model.eval()(example_inputs)  # left in eval, as prune_to_speedup always has
        finally:
            for h in hooks:
                h.remove()
        self.output_layer = order[-1]


class _MacsModel:
    """Predicts tp.utils.count_ops_and_params MACs for any per-group channel counts.

    Conv, linear and batch-norm costs are computed exactly from channel counts and the spatial
    size seen in one traced forward. Activation and pooling modules fed by a layer of a known
    group (directly, or through other such modules) scale with that group's channels. The rest
    (activations fed by a functional op such as a residual add: well under 1% of a CNN's MACs)
    is calibrated as a residual and scaled with the fraction of channels kept.
    """

    def __init__(
        self, trace: _Trace, dg: tp.DependencyGraph, roots: list[nn.Module], measured_macs: int
    ) -> None:
        self.full = [r.out_channels if isinstance(r, nn.Conv2d) else r.out_features for r in roots]
        self._group_layers(dg, roots)
        self.modules = list(trace.positions.items())
        # (group, counted elements per channel) of each activation/pooling call fed by a group.
        self.calls = [
            (self.out_group[layer], per_channel)
            for layer, per_channel in trace.calls
            if layer in self.out_group
        ]
        self.residual = measured_macs - self._analytic(self.full)
        if abs(self.residual) <= TOLERANCE / 2 * measured_macs:
            # A rest this small cannot move a landing by half the tolerance when scaled by the
            # kept fraction. Kept that way where it holds (VGG19, ResNets: their landings stay
            # what they were); MobileNets' activations (~5% of MACs) need their groups.
            self.calls = []
        self.residual -= self._elementwise(self.full)

    def _group_layers(self, dg: tp.DependencyGraph, roots: list[nn.Module]) -> None:
        """Which group's channel count sets each layer's input and output channels."""
        root_index = {m: i for i, m in enumerate(roots)}
        # A layer reading a concatenation takes its inputs from several groups.
        self.in_groups: dict[nn.Module, list[int]] = {}
        self.out_group: dict[nn.Module, int] = {}
        for root in roots:
            fn = dg.get_pruner_of_module(root).prune_out_channels
            for dep, _ in dg.get_pruning_group(root, fn, [0]):
                target = dep.target.module
                if dg.is_out_channel_pruning_fn(dep.handler):
                    self.out_group[target] = root_index[root]
                elif dg.is_in_channel_pruning_fn(dep.handler):
                    groups = self.in_groups.setdefault(target, [])
                    if root_index[root] not in groups:
                        groups.append(root_index[root])

    def _channels(self, module: nn.Module, keep: Sequence[int], current: int, side: str) -> int:
        if side == "out":
            group = self.out_group.get(module)
            return current if group is None else keep[group]
        groups = self.in_groups.get(module, [])
        full = sum(self.full[g] for g in groups)
        kept = sum(keep[g] for g in groups)
        if isinstance(module, nn.Linear) and groups and current % full == 0 and current > full:
            return current // full * kept  # a linear layer reading flattened (C, H, W) maps
        return current - full + kept  # channels from other places (ungrouped) stay

    def _analytic(self, keep: Sequence[int]) -> float:
        total = 0.0
        for m, pos in self.modules:
            if isinstance(m, nn.Conv2d):
                cin = self._channels(m, keep, m.in_channels, "in")
                cout = self._channels(m, keep, m.out_channels, "out")
                k = m.kernel_size[0] * m.kernel_size[1]
                # A depthwise conv (groups == channels) keeps one input channel per output.
                per_output = k * (m.in_channels // m.groups if m.groups > 1 else cin)
                total += (per_output + (m.bias is not None)) * cout * pos
            elif isinstance(m, nn.Linear):
                cin = self._channels(m, keep, m.in_features, "in")
                cout = self._channels(m, keep, m.out_features, "out")
                total += (cin + (m.bias is not None)) * cout * pos
            else:  # BatchNorm2d: a scale and a shift per element when affine
                c = self._channels(m, keep, m.num_features, "out")
                total += c * pos * (2 if m.affine else 1)
        return total

    def _elementwise(self, keep: Sequence[int]) -> float:
        return float(sum(per_channel * keep[g] for g, per_channel in self.calls))

    def __call__(self, keep: Sequence[int]) -> float:
        kept_fraction = sum(keep) / max(1, sum(self.full))
        return self._analytic(keep) + self._elementwise(keep) + self.residual * kept_fraction


def _per_channel(t: torch.Tensor) -> int:
    """Elements per channel of one sample: (N, C, H, W) -> H*W; (N, C) -> 1."""
    return t[0].numel() // t.shape[1] if t.dim() > 2 else 1


def _global_key(scores: list[torch.Tensor], order: list[torch.Tensor]) -> torch.Tensor:
    """Sort key of every channel (in per-group ascending order): its group-normalised score."""
    return torch.cat([s[o] for s, o in zip(scores, order, strict=True)])


def _local_key(scores: list[torch.Tensor], order: list[torch.Tensor]) -> torch.Tensor:
    """Sort key: a channel's rank within its own layer as a fraction of the layer's size."""
    return torch.cat([(torch.arange(len(s)) + 0.5) / len(s) for s in scores])


# How channels are compared across layers: name -> sort key over all channels.
RANKINGS: Registry[Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]] = Registry(
    "ranking", {"global": _global_key, "local": _local_key}
)


def _removal_order(scores: list[torch.Tensor], ranking: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All channels, least important first, as (group index, channel index) tensors.

    Global ranking sorts by the (group-normalised) score itself. Local ranking sorts by a
    channel's rank within its own layer as a fraction of the layer's size, so removing the first
    k channels cuts every layer by the same fraction, one channel at a time. Ties (e.g. the
    all-ones BN scales of a fresh model) are broken by position, so the order is total.
    """
    group_ids = torch.cat([torch.full((len(s),), g) for g, s in enumerate(scores)])
    channel_order = [torch.argsort(s, stable=True) for s in scores]
    channels = torch.cat(channel_order)
    order = torch.argsort(RANKINGS[ranking](scores, channel_order), stable=True)
    return group_ids[order], channels[order]


@dataclass(frozen=True)
class _Widths:
    """The widths each group may keep: multiples of round_to from its floor up to its current
    size, and the size itself (a group is never widened, and one whose size is not a multiple
    may stay whole). With round_to 1: every count from the floor to the size."""

    sizes: list[int]  # each group's current channels
    floors: list[int]  # a multiple of round_to, or the group's size (it cannot be pruned)
    round_to: int

    def up(self, g: int, width: int) -> int:
        """The narrowest allowed width of group g that keeps at least `width` channels."""
        w = max(round_up(width, self.round_to), self.floors[g])
        return min(w, self.sizes[g])

    def narrower(self, g: int, width: int) -> int | None:
        """The next allowed width below `width` (None at the floor)."""
        w = (width - 1) // self.round_to * self.round_to
        return w if w >= self.floors[g] and w > 0 else None

    def wider(self, g: int, width: int) -> int | None:
        """The next allowed width above `width` (None at the size)."""
        return None if width >= self.sizes[g] else self.up(g, width + 1)


def _refine_landing(
    keep: list[int], widths: _Widths, predict: _MacsModel, target_macs: float
) -> list[int]:
    """Nudge per-group counts by one allowed step until the prediction is close to the target.

    Needed on small models, where the next channel in ranking order can move MACs by several %
    (one channel of an 8-wide 32x32 layer is ~10% of a width-0.125 VGG19 at 8.84x), and with
    round_to, whose steps are round_to channels. Each move removes a group's next least
    important channels or restores its most important removed ones; it stops where no single
    move comes closer (a local search: the closest it finds, not necessarily the closest).
    """

    def miss(k: list[int]) -> float:
        return abs(math.log(predict(k) / target_macs))

    for _ in range(4 * len(keep)):
        if miss(keep) < TOLERANCE / 4:
            break
        steps = (
            (g, step(g, keep[g]))
            for g in range(len(keep))
            for step in (widths.narrower, widths.wider)
        )
        moves = [[*keep[:g], w, *keep[g + 1 :]] for g, w in steps if w is not None]
        best = min(moves, key=miss, default=keep)
        if miss(best) >= miss(keep):
            break
        keep = best
    return keep


def _plan_keep(
    scores: list[torch.Tensor], widths: _Widths, predict: _MacsModel, request: _Request
) -> list[torch.Tensor]:
    """Per group, the channels to remove: the fewest whose predicted MACs reach the target,
    in blocks that leave every pruned group a multiple of round_to. No channel at all when the
    model as it is lands closer than any such plan (possible only with round_to > 1)."""
    group_ids, channels = _removal_order(scores, request.ranking)
    sizes, floor_t, r = torch.tensor(widths.sizes), torch.tensor(widths.floors), widths.round_to

    def keep_after(k: int) -> list[int]:
        """Channels each group keeps once the first k channels in removal order are gone,
        rounded up to an allowed width (so it never grows with k)."""
        removed = torch.bincount(group_ids[:k], minlength=len(scores))
        keep = torch.maximum(sizes - removed, floor_t)  # floors are multiples or the size
        return torch.minimum((keep + r - 1) // r * r, sizes).tolist()

    k = _fewest_removals(keep_after, len(group_ids), predict, request)
    keep = _refine_landing(keep_after(k), widths, predict, request.target_macs)
    if _miss(predict(widths.sizes), request) <= _miss(predict(keep), request):
        keep = widths.sizes
    # Remove, per group, its least important channels (in removal order) down to `keep`.
    return [channels[group_ids == g][: len(s) - keep[g]] for g, s in enumerate(scores)]


def _miss(macs: float, request: _Request) -> float:
    return abs(math.log(macs / request.target_macs))


def _fewest_removals(
    keep_after: Callable[[int], list[int]], total: int, predict: _MacsModel, request: _Request
) -> int:
    """Bisection: the smallest k whose keep_after(k) is predicted at or under the target."""
    target_macs = request.target_macs
    floor_macs = predict(keep_after(total))
    if floor_macs > target_macs and request.floor_checked:
        # A later prune's MACs model (calibrated on the pruned model) can put the floor a
        # little above a target the first one found reachable: go as far as the floor allows.
        return total
    if floor_macs > target_macs:
        raise ValueError(
            f"the channel floor makes the target unreachable: the requested "
            f"{request.base_macs / target_macs:.3f}x needs {target_macs / 1e6:.2f}M MACs, and "
            f"even with every prunable group cut to its floor the model keeps "
            f"{floor_macs / 1e6:.2f}M: the most it can reach is "
            f"{request.base_macs / floor_macs:.3f}x; lower min_channels / min_channel_ratio"
            f"{' / round_to' if request.round_to > 1 else ''} or the speed-up"
        )
    lo, hi = 0, total
    while lo < hi:  # predicted MACs never rise as k grows
        mid = (lo + hi) // 2
        if predict(keep_after(mid)) <= target_macs:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _apply(dg: tp.DependencyGraph, roots: list[nn.Module], removals: list[torch.Tensor]) -> int:
    """Prune the planned channels; how many were removed."""
    for root, idxs in zip(roots, removals, strict=True):
        if len(idxs) == 0:
            continue
        group = dg.get_pruning_group(
            root, dg.get_pruner_of_module(root).prune_out_channels, idxs.tolist()
        )
        group.prune()
    return sum(len(idxs) for idxs in removals)


@dataclass(frozen=True)
class _Request:
    """What one prune_to_speedup call asks of every prune it makes."""

    base_macs: int  # the unpruned model's MACs
    target_macs: float  # base_macs / speed-up
    importance: str
    ranking: str
    floors: dict[str, int]  # layer name -> fewest output channels it may keep (rounded up)
    ignored_layers: tuple[nn.Module, ...]
    round_to: int = ROUND_TO  # every pruned group's width is a multiple of it
    # Set after the first prune: the floor's reach was checked against the unpruned model's
    # prediction (the one floor_speedup makes), so later prunes do not raise for it again.
    floor_checked: bool = False


@dataclass(frozen=True)
class _Size:
    macs: int
    params: int
    widths: dict[str, int]


def _size(model: nn.Module, example_inputs: torch.Tensor) -> _Size:
    macs, params = count_macs_params(model, example_inputs)
    return _Size(macs, params, layer_widths(model))


def _registry_ignored(model: nn.Module) -> list[nn.Module]:
    """The layers the model's registry entry never prunes (for models built by build_model)."""
    spec = getattr(model, "prunetune_spec", None)
    return [] if spec is None else model_entry(spec.arch).ignored_layers(model)


def _prunable_groups(
    model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[nn.Module] = ()
) -> tuple[tp.DependencyGraph, list[tp.Group], list[nn.Module], _Trace]:
    """The dependency graph, every prunable channel group and each group's root layer.

    A group is every layer whose channels must go together: a conv and its BN, the next layer's
    inputs, all branches of a residual add or a concatenation, a depthwise conv's in and out.
    Groups holding the classifier's output or an ignored layer's output are left out. Also
    returns the model's _Trace (taken after the graph, so it runs in the mode the caller left).
    """
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    trace = _Trace(model, example_inputs)
    ignored = [*ignored_layers, *_registry_ignored(model), trace.output_layer]
    groups = list(
        dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear))
    )
    return dg, groups, [g[0].dep.target.module for g in groups], trace


def _group_floors(
    model: nn.Module, dg: tp.DependencyGraph, groups: list[tp.Group], floors: dict[str, int]
) -> list[int]:
    """Each group's floor: the largest floor of the conv/linear layers whose outputs it cuts."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in groups:
        cut = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
        ]
        out.append(max((floors.get(names[m], 1) for m in cut), default=1))
    return out


def channel_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[tuple[str, ...]]:
    """The names of the conv/linear layers whose output channels each prunable group cuts
    together, in module order (one name: a layer pruned alone; more: coupled, e.g. every conv
    feeding one residual stage's adds). For plots and reports; nothing is pruned."""
    dg, groups, _, _ = _prunable_groups(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    out = []
    for group in groups:
        cut = {
            names[dep.target.module]
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
        }
        if cut:
            out.append(tuple(sorted(cut, key=order.__getitem__)))
    return sorted(out, key=lambda g: order[g[0]])


def _score_channels(
    model: nn.Module, example_inputs: torch.Tensor, request: _Request
) -> tuple[tp.DependencyGraph, list[tp.Group], list[nn.Module], _Trace, list[torch.Tensor]]:
    """The prunable groups (as _prunable_groups) and the scores of their channels."""
    dg, groups, roots, trace = _prunable_groups(model, example_inputs, request.ignored_layers)
    imp = make_importance(request.importance)
    with torch.no_grad():
        scores = [imp(g).detach().float().cpu() for g in groups]
    return dg, groups, roots, trace, scores


def _prune_once(
    model: nn.Module, example_inputs: torch.Tensor, macs_now: int, request: _Request
) -> int:
    """Score every channel once, plan the widths predicted to land on the target, prune;
    how many channels were removed."""
    dg, groups, roots, trace, scores = _score_channels(model, example_inputs, request)
    sizes = [len(s) for s in scores]
    # A group already at or below its floor keeps everything it has.
    floors = [
        min(size, f)
        for size, f in zip(sizes, _group_floors(model, dg, groups, request.floors), strict=True)
    ]
    predict = _MacsModel(trace, dg, roots, macs_now)
    removals = _plan_keep(scores, _Widths(sizes, floors, request.round_to), predict, request)
    return _apply(dg, roots, removals)


def _prune_until_landed(
    model: nn.Module, example_inputs: torch.Tensor, before: _Size, request: _Request
) -> _Size:
    """Prune, recount, and prune again only while the real MACs are still above the target
    and a prune still removes something; the size reached. With round_to 1 the landing must be
    within TOLERANCE; above 1 it is the closest the planner finds at that granularity."""
    macs, params = before.macs, before.params
    for _ in range(MAX_PRUNES):
        if macs <= request.target_macs * (1 + TOLERANCE / 2):
            break
        if not _prune_once(model, example_inputs, macs, request):
            break  # no plan lands closer than the model as it is
        macs, params = count_macs_params(model, example_inputs)
        request = dataclasses.replace(request, floor_checked=True)
    if request.round_to == 1:
        _check_reached(macs, request)
    return _Size(macs, params, layer_widths(model))


def _check_reached(macs: int, request: _Request) -> None:
    if macs > request.target_macs * (1 + TOLERANCE):
        raise ValueError(
            f"the target {request.base_macs / request.target_macs:.3f}x was not reached: after "
            f"{MAX_PRUNES} prunes the model is at {request.base_macs / macs:.3f}x "
            f"({macs / 1e6:.2f}M MACs, target {request.target_macs / 1e6:.2f}M)"
        )


def _check_request(speedup: float, importance: str, ranking: str, round_to: int) -> None:
    IMPORTANCES.check("importance", importance)
    RANKINGS.check("ranking", ranking)
    if not speedup >= 1.0:
        raise ValueError(f"speedup={speedup!r} is invalid: it must be >= 1")
    positive_int("round_to", round_to, minimum=1)


def _target_macs(base_macs: int, macs_before: int, speedup: float, round_to: int) -> float:
    """The MACs to land on. Past them already is an error (speed-ups increase stage by stage),
    except with round_to > 1, whose previous landing may overshoot: then nothing is pruned."""
    target_macs = base_macs / speedup
    if round_to == 1 and macs_before < target_macs * (1 - TOLERANCE):
        raise ValueError(
            f"the model is already at {base_macs / macs_before:.3f}x, past the "
            f"requested {speedup:.3f}x; speed-ups must increase stage by stage"
        )
    return target_macs


def prune_to_speedup(
    model: nn.Module,
    example_inputs: torch.Tensor,
    speedup: float,
    *,
    base_macs: int | None = None,
    importance: str = "group_norm",
    ranking: str = "global",
    min_channels: int = MIN_CHANNELS,
    min_channel_ratio: float = MIN_CHANNEL_RATIO,
    original_widths: dict[str, int] | None = None,
    ignored_layers: Sequence[nn.Module] = (),
    round_to: int = ROUND_TO,
) -> PruneReport:
    """Prune `model` in place until base_macs / MACs is within 1% of `speedup`.

    `base_macs` and `original_widths` describe the unpruned model; pass them (from the first
    stage's report) when pruning an already-pruned model stage after stage. The floor is taken
    against `original_widths`. The classifier's output layer is never pruned.

    `round_to` > 1 keeps every pruned group's width a multiple of it (floors rounded up to one;
    a group narrower than round_to, or not a multiple of it, either stays whole or is cut to a
    multiple) and lands as close to `speedup` as such widths allow, which may be more than 1%
    off on a small model: the report's speedup says where it landed.
    """
    _check_request(speedup, importance, ranking, round_to)
    start = time.perf_counter()
    before = _size(model, example_inputs)
    base_macs = base_macs or before.macs
    original_widths = dict(original_widths or before.widths)
    request = _Request(
        base_macs=base_macs,
        target_macs=_target_macs(base_macs, before.macs, speedup, round_to),
        importance=importance,
        ranking=ranking,
        floors=layer_floors(original_widths, min_channels, min_channel_ratio, round_to),
        ignored_layers=tuple(ignored_layers),
        round_to=round_to,
    )
    after = _prune_until_landed(model, example_inputs, before, request)
    seconds = time.perf_counter() - start
    return _report(before, after, base_macs, speedup, original_widths, seconds, round_to)


def _report(
    before: _Size,
    after: _Size,
    base_macs: int,
    speedup: float,
    original_widths: dict[str, int],
    seconds: float,
    round_to: int,
) -> PruneReport:
    # The narrowest layer: the one that kept the lowest fraction of its original channels.
    widths = after.widths
    narrowest = min(widths, key=lambda n: widths[n] / original_widths.get(n, widths[n]))
    return PruneReport(
        base_macs=base_macs,
        macs_before=before.macs,
        macs=after.macs,
        params_before=before.params,
        params=after.params,
        target_speedup=speedup,
        speedup=base_macs / after.macs,
        widths_before=before.widths,
        widths_after=widths,
        original_widths=original_widths,
        narrowest=narrowest,
        seconds=seconds,
        round_to=round_to,
    )


def floor_speedup(
    model: nn.Module,
    example_inputs: torch.Tensor,
    min_channels: int = MIN_CHANNELS,
    min_channel_ratio: float = MIN_CHANNEL_RATIO,
    round_to: int = ROUND_TO,
) -> float:
    """The largest speed-up the per-layer floor lets this unpruned model reach: every prunable
    layer cut to its floor (rounded up to a multiple of round_to), predicted as
    prune_to_speedup predicts it (no pruning is done). Any target above it is unreachable,
    whatever the importance, ranking or stages."""
    macs, _ = count_macs_params(model, example_inputs)
    dg, groups, roots, trace = _prunable_groups(model, example_inputs)
    floors = layer_floors(layer_widths(model), min_channels, min_channel_ratio, round_to)
    predict = _MacsModel(trace, dg, roots, macs)
    return macs / predict(_group_floors(model, dg, groups, floors))


def sparsity_regularizer(
    model: nn.Module, example_inputs: torch.Tensor, reg: float
) -> Callable[[nn.Module], None]:
    """Torch-Pruning's group regulariser ("group_sl"): call it after backward(), before step().

    It pushes whole channel groups towards zero so the later prune removes less that matters.
    """
    pruner = tp.pruner.GroupNormPruner(
        model,
        example_inputs,
        importance=make_importance("group_norm"),
        reg=reg,
        ignored_layers=[*_registry_ignored(model), _Trace(model, example_inputs).output_layer],
    )
    return lambda m: pruner.regularize(m)
