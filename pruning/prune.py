"""Land a model on an exact MACs speed-up with Torch-Pruning's dependency graph, in one prune.

Torch-Pruning's benchmark reaches a speed-up by 400 micro-steps with a MACs recount after each
(100-250 s for VGG19 on a 2-core CPU, and it overshoots). Here the importance of every channel is
scored once, a MACs model predicts the cost of any set of per-layer widths, a bisection over the
ranking threshold finds the widths that land on the target, and the model is pruned once. A real
recount checks the landing and, in the rare case the prediction was off, prunes a little more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pruning.importance import IMPORTANCES, make_importance
from pruning.registry import Registry

TOLERANCE = 0.01  # the landing must be within +-1% of the requested MACs ratio
MAX_PRUNES = 3  # one prune lands; the others only run if the MACs model was off
# The per-layer floor's defaults: a layer keeps at least max(MIN_CHANNELS, ceil(MIN_CHANNEL_RATIO
# * its original channels)). Torch-Pruning has none; without it global ranking cuts VGG19's first
# convolutions to 1-4 channels.
MIN_CHANNELS = 4
MIN_CHANNEL_RATIO = 0.1


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by module name."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            widths[name] = m.out_features
    return widths


def channel_floor(original: int, min_channels: int, min_channel_ratio: float) -> int:
    return min(original, max(min_channels, math.ceil(min_channel_ratio * original), 1))


def layer_floors(
    original_widths: dict[str, int], min_channels: int, min_channel_ratio: float
) -> dict[str, int]:
    """The fewest output channels each layer may keep, by module name."""
    return {
        n: channel_floor(c, min_channels, min_channel_ratio) for n, c in original_widths.items()
    }


def speedup_cap(min_channel_ratio: float) -> float:
    """About the largest speed-up a ratio floor allows: 1 / ratio^2, since a conv's MACs scale
    with in x out channels. Infinite without a ratio floor."""
    return math.inf if min_channel_ratio <= 0 else 1.0 / min_channel_ratio**2


def _output_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The last conv/linear layer to run: its outputs are the classes, never pruned."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1]


class _MacsModel:
    """Predicts tp.utils.count_ops_and_params MACs for any per-group channel counts.

    Conv, linear and batch-norm costs are computed exactly from channel counts and the spatial
    size seen in one traced forward; the rest (ReLU, pooling: well under 1% of a CNN's MACs) is
    calibrated as a residual and scaled with the fraction of channels kept.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        dg: tp.DependencyGraph,
        roots: list[nn.Module],
        measured_macs: int,
    ) -> None:
        positions: dict[nn.Module, int] = {}  # output elements per channel (H*W, or tokens)
        hooks = [
            m.register_forward_hook(self._position_hook(positions))
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
        ]
        try:
            with torch.no_grad():
                model.eval()(example_inputs)
        finally:
            for h in hooks:
                h.remove()
        root_index = {m: i for i, m in enumerate(roots)}
        self.in_group: dict[nn.Module, int] = {}
        self.out_group: dict[nn.Module, int] = {}
        for root in roots:
            fn = dg.get_pruner_of_module(root).prune_out_channels
            for dep, _ in dg.get_pruning_group(root, fn, [0]):
                target = dep.target.module
                if dg.is_out_channel_pruning_fn(dep.handler):
                    self.out_group[target] = root_index[root]
                elif dg.is_in_channel_pruning_fn(dep.handler):
                    self.in_group[target] = root_index[root]
        self.modules = list(positions.items())
        self.full = [r.out_channels if isinstance(r, nn.Conv2d) else r.out_features for r in roots]
        self.residual = measured_macs - self._analytic(self.full)

    @staticmethod
    def _position_hook(store: dict[nn.Module, int]):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            store[module] = output[0].numel() // output.shape[1] if output.dim() > 2 else 1

        return hook

    def _channels(self, module: nn.Module, keep: Sequence[int], current: int, side: str) -> int:
        group = (self.in_group if side == "in" else self.out_group).get(module)
        return current if group is None else keep[group]

    def _analytic(self, keep: Sequence[int]) -> float:
        total = 0.0
        for m, pos in self.modules:
            if isinstance(m, nn.Conv2d):
                cin = self._channels(m, keep, m.in_channels, "in")
                cout = self._channels(m, keep, m.out_channels, "out")
                k = m.kernel_size[0] * m.kernel_size[1]
                total += (k * cin // m.groups + (m.bias is not None)) * cout * pos
            elif isinstance(m, nn.Linear):
                cin = self._channels(m, keep, m.in_features, "in")
                cout = self._channels(m, keep, m.out_features, "out")
                total += (cin + (m.bias is not None)) * cout * pos
            else:  # BatchNorm2d: a scale and a shift per element when affine
                c = self._channels(m, keep, m.num_features, "out")
                total += c * pos * (2 if m.affine else 1)
        return total

    def __call__(self, keep: Sequence[int]) -> float:
        kept_fraction = sum(keep) / max(1, sum(self.full))
        return self._analytic(keep) + self.residual * kept_fraction


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


def _refine_landing(
    keep: list[int], sizes: list[int], floors: list[int], predict: _MacsModel, target_macs: float
) -> list[int]:
    """Nudge per-group counts by single channels until the prediction is close to the target.

    Needed on small models, where the next channel in ranking order can move MACs by several %
    (one channel of an 8-wide 32x32 layer is ~10% of a width-0.125 VGG19 at 8.84x). Each move
    removes a group's next least important channel or restores its most important removed one.
    """

    def miss(k: list[int]) -> float:
        return abs(math.log(predict(k) / target_macs))

    for _ in range(4 * len(keep)):
        if miss(keep) < TOLERANCE / 4:
            break
        moves = [
            [*keep[:g], keep[g] + d, *keep[g + 1 :]]
            for g in range(len(keep))
            for d in (-1, 1)
            if floors[g] <= keep[g] + d <= sizes[g]
        ]
        best = min(moves, key=miss, default=keep)
        if miss(best) >= miss(keep):
            break
        keep = best
    return keep


def _plan_keep(
    scores: list[torch.Tensor],
    floors: list[int],
    ranking: str,
    predict: _MacsModel,
    target_macs: float,
) -> list[torch.Tensor]:
    """Per group, the channels to remove: the fewest whose predicted MACs reach target_macs."""
    group_ids, channels = _removal_order(scores, ranking)
    sizes = torch.tensor([len(s) for s in scores])
    floor_t = torch.tensor(floors)

    def keep_after(k: int) -> list[int]:
        """Channels each group keeps once the first k channels in removal order are gone."""
        removed = torch.bincount(group_ids[:k], minlength=len(scores))
        return torch.maximum(sizes - removed, floor_t).tolist()

    k = _fewest_removals(keep_after, len(group_ids), predict, target_macs)
    keep = _refine_landing(keep_after(k), sizes.tolist(), floors, predict, target_macs)
    # Remove, per group, its least important channels (in removal order) down to `keep`.
    return [channels[group_ids == g][: len(s) - keep[g]] for g, s in enumerate(scores)]


def _fewest_removals(
    keep_after: Callable[[int], list[int]], total: int, predict: _MacsModel, target_macs: float
) -> int:
    """Bisection: the smallest k whose keep_after(k) is predicted at or under target_macs."""
    floor_macs = predict(keep_after(total))
    if floor_macs > target_macs:
        raise ValueError(
            f"the channel floor makes the target unreachable: even pruning every layer to its "
            f"floor leaves {floor_macs / 1e6:.2f}M MACs > {target_macs / 1e6:.2f}M; "
            "lower min_channels / min_channel_ratio or the speed-up"
        )
    lo, hi = 0, total
    while lo < hi:  # predicted MACs never rise as k grows
        mid = (lo + hi) // 2
        if predict(keep_after(mid)) <= target_macs:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _apply(dg: tp.DependencyGraph, roots: list[nn.Module], removals: list[torch.Tensor]) -> None:
    for root, idxs in zip(roots, removals, strict=True):
        if len(idxs) == 0:
            continue
        group = dg.get_pruning_group(
            root, dg.get_pruner_of_module(root).prune_out_channels, idxs.tolist()
        )
        group.prune()


@dataclass(frozen=True)
class _Request:
    """What one prune_to_speedup call asks of every prune it makes."""

    target_macs: float  # base_macs / speed-up
    importance: str
    ranking: str
    floors: dict[str, int]  # layer name -> fewest output channels it may keep
    ignored_layers: tuple[nn.Module, ...]


@dataclass(frozen=True)
class _Size:
    macs: int
    params: int
    widths: dict[str, int]


def _size(model: nn.Module, example_inputs: torch.Tensor) -> _Size:
    macs, params = count_macs_params(model, example_inputs)
    return _Size(macs, params, layer_widths(model))


def _score_channels(
    model: nn.Module, example_inputs: torch.Tensor, request: _Request
) -> tuple[tp.DependencyGraph, list[nn.Module], list[torch.Tensor]]:
    """The dependency graph, each prunable group's root layer, and the scores of its channels."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    ignored = [*request.ignored_layers, _output_layer(model, example_inputs)]
    groups = list(
        dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear))
    )
    roots = [g[0].dep.target.module for g in groups]
    imp = make_importance(request.importance)
    with torch.no_grad():
        scores = [imp(g).detach().float().cpu() for g in groups]
    return dg, roots, scores


def _prune_once(
    model: nn.Module, example_inputs: torch.Tensor, macs_now: int, request: _Request
) -> None:
    """Score every channel once, plan the widths predicted to land on the target, prune."""
    dg, roots, scores = _score_channels(model, example_inputs, request)
    names = {m: n for n, m in model.named_modules()}
    # A layer already at or below its floor keeps everything it has.
    floors = [
        min(len(s), request.floors.get(names[r], 1)) for s, r in zip(scores, roots, strict=True)
    ]
    predict = _MacsModel(model, example_inputs, dg, roots, macs_now)
    _apply(dg, roots, _plan_keep(scores, floors, request.ranking, predict, request.target_macs))


def _prune_until_landed(
    model: nn.Module, example_inputs: torch.Tensor, macs: int, request: _Request
) -> None:
    """Prune, recount, and prune again only while the real MACs are still above the target."""
    for _ in range(MAX_PRUNES):
        if macs <= request.target_macs * (1 + TOLERANCE / 2):
            return
        _prune_once(model, example_inputs, macs, request)
        macs, _ = count_macs_params(model, example_inputs)


def _check_request(speedup: float, importance: str, ranking: str) -> None:
    IMPORTANCES.check("importance", importance)
    RANKINGS.check("ranking", ranking)
    if not speedup >= 1.0:
        raise ValueError(f"speedup={speedup!r} is invalid: it must be >= 1")


def _target_macs(base_macs: int, macs_before: int, speedup: float) -> float:
    target_macs = base_macs / speedup
    if macs_before < target_macs * (1 - TOLERANCE):
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
) -> PruneReport:
    """Prune `model` in place until base_macs / MACs is within 1% of `speedup`.

    `base_macs` and `original_widths` describe the unpruned model; pass them (from the first
    stage's report) when pruning an already-pruned model stage after stage. The floor is taken
    against `original_widths`. The classifier's output layer is never pruned.
    """
    _check_request(speedup, importance, ranking)
    start = time.perf_counter()
    before = _size(model, example_inputs)
    base_macs = base_macs or before.macs
    original_widths = dict(original_widths or before.widths)
    request = _Request(
        target_macs=_target_macs(base_macs, before.macs, speedup),
        importance=importance,
        ranking=ranking,
        floors=layer_floors(original_widths, min_channels, min_channel_ratio),
        ignored_layers=tuple(ignored_layers),
    )
    _prune_until_landed(model, example_inputs, before.macs, request)
    after = _size(model, example_inputs)
    seconds = time.perf_counter() - start
    return _report(before, after, base_macs, speedup, original_widths, seconds)


def _report(
    before: _Size,
    after: _Size,
    base_macs: int,
    speedup: float,
    original_widths: dict[str, int],
    seconds: float,
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
    )


def floor_speedup(
    model: nn.Module,
    example_inputs: torch.Tensor,
    min_channels: int = MIN_CHANNELS,
    min_channel_ratio: float = MIN_CHANNEL_RATIO,
) -> float:
    """The largest speed-up the per-layer floor lets this unpruned model reach: every prunable
    layer cut to its floor, predicted as prune_to_speedup predicts it (no pruning is done).
    Any target above it is unreachable, whatever the importance, ranking or stages."""
    macs, _ = count_macs_params(model, example_inputs)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    ignored = [_output_layer(model, example_inputs)]
    groups = dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear))
    roots = [g[0].dep.target.module for g in groups]
    names = {m: n for n, m in model.named_modules()}
    floors = layer_floors(layer_widths(model), min_channels, min_channel_ratio)
    predict = _MacsModel(model, example_inputs, dg, roots, macs)
    return macs / predict([floors[names[r]] for r in roots])


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
        ignored_layers=[_output_layer(model, example_inputs)],
    )
    return lambda m: pruner.regularize(m)
