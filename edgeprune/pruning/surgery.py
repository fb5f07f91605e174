"""Structured channel pruning: physically remove output channels through torch-pruning's
dependency graph, so residual adds, depthwise and grouped convs, concats, squeeze-excite
gates, LayerNorms and layer-scale parameters stay consistent.

torch-pruning tells which channels are coupled; on top of it this module finds the *units*
a root layer can lose: a single channel, one position in every group of a grouped conv
(torch-pruning keeps `groups` and slices every group alike, so anything else breaks the
weights), or channels tied through a concat cycle such as GhostNet's primary + cheap op.
Whole units go, a forward pass checks every pruned group, and a group that cannot be
pruned is rolled back and reported as a note instead of failing the run.

A pruned model is fully described by its architecture, its channel spec (output channels
per prunable layer, see spec.py) and its weights.
"""
from __future__ import annotations

import copy

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers

from edgeprune.errors import BadInputError
from edgeprune.pruning.importance import Batch, Criterion, create_importance, list_importances

ChannelSpec = Dict[str, int]
log = logging.getLogger("edgeprune.pruning")
_CONV = nn.modules.conv._ConvNd


@dataclass
class PruneConfig:
    """What to prune: a ratio of every prunable layer's channels, or an explicit channel spec.

    Args:
        ratio: fraction of output channels removed from each prunable layer.
        spec: output channels to keep per layer name (layers not named are left alone).
        importance: registry name of the criterion that picks which channels go.
        round_to: keep channel counts at multiples of this (SIMD-friendly shapes).
        ignored: layer (or block) names left untouched: neither their output nor their
            input channels change. The classifier head always keeps its outputs.
    """

    ratio: Optional[float] = None
    spec: Optional[ChannelSpec] = None
    importance: str = "l1"
    round_to: int = 1
    ignored: Sequence[str] = field(default_factory=tuple)
    version: int = 1

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.spec is None):
            raise BadInputError("give exactly one of a pruning ratio or a channel spec")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise BadInputError(f"pruning ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 1:
            raise BadInputError(f"round_to must be >= 1, got {self.round_to}")
        if self.importance not in list_importances():
            raise BadInputError(
                f"unknown importance {self.importance!r}; known: {', '.join(list_importances())}")
        if self.spec is not None:
            bad = {k: v for k, v in self.spec.items() if not isinstance(v, int) or v < 1}
            if bad:
                raise BadInputError(f"channel spec needs positive integers, got {bad}")
        if isinstance(self.ignored, str):
            self.ignored = tuple(n for n in self.ignored.split(",") if n)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- layers

def head_layer(model: nn.Module) -> str:
    """Name of the classifier head: the last conv or linear layer in module order."""
    names = [n for n, m in model.named_modules() if isinstance(m, (_CONV, nn.Linear))]
    if not names:
        raise BadInputError("model has no conv or linear layer to prune")
    return names[-1]


def is_depthwise(m: nn.Module) -> bool:
    """A conv whose every channel is its own group (also once pruned down to one channel)."""
    return isinstance(m, _CONV) and m.groups == m.in_channels == m.out_channels


def prunable_layers(model: nn.Module, ignored: Sequence[str] = ()) -> List[Tuple[str, nn.Module]]:
    """Layers whose output channels can be chosen: convs (dense or grouped) and linears.

    Depthwise convs are not listed (their channels follow the layer that feeds them), nor
    the head, nor ignored layers. The list depends on the architecture only, not on how far
    it was pruned, so a saved channel spec always names the same layers.
    """
    skip = _ignored_names(model, ignored) | {head_layer(model)}
    return [(name, m) for name, m in model.named_modules()
            if name not in skip and (isinstance(m, nn.Linear) or
                                     (isinstance(m, _CONV) and not is_depthwise(m)))]


def channel_spec(model: nn.Module) -> ChannelSpec:
    """Output channels of every prunable layer."""
    return {name: out_channels(m) for name, m in prunable_layers(model)}


def spec_for_ratio(model: nn.Module, ratio: float, round_to: int = 1,
                   ignored: Sequence[str] = ()) -> ChannelSpec:
    """Per-layer arithmetic only: the spec that removes `ratio` of each layer's channels.

    Coupling is not considered (grouped convs, concat cycles); `prune(PruneConfig(ratio=...))`
    does, so prefer it to pruning to this spec.
    """
    return {name: round_channels(out_channels(m) * (1.0 - ratio), round_to, out_channels(m))
            for name, m in prunable_layers(model, ignored)}


def round_channels(channels: float, round_to: int, limit: int) -> int:
    """Round to a multiple of `round_to`, at least one multiple, at most `limit`."""
    if limit <= round_to:
        return max(1, min(limit, math.ceil(channels)))
    return min(limit, max(round_to, int(round(channels / round_to)) * round_to))


def out_channels(m: nn.Module) -> int:
    """A Conv2d's out_channels or a Linear's out_features."""
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _out_fn(m: nn.Module) -> Callable:
    return tp.prune_linear_out_channels if isinstance(m, nn.Linear) else tp.prune_conv_out_channels


def _ignored_names(model: nn.Module, ignored: Sequence[str]) -> Set[str]:
    """Every module name under the ignored names; an unknown name is an error."""
    names = [n for n, _ in model.named_modules()]
    out: Set[str] = set()
    for prefix in ignored:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise BadInputError(f"ignored layer {prefix!r} is not in the model; names look like "
                                f"{', '.join(n for n in names[1:4])} (see `edgeprune analyze`)")
        out.update(hits)
    return out


# --------------------------------------------------------------------------- groups

@dataclass
class CoupledGroup:
    """The prunable layers whose output channels go together, seen from one root layer.

    Args:
        root: name of the root layer; its channel indices number the units.
        units: root channel indices that can only be removed together, ordered.
        members: prunable layers in the group -> their channels per unit.
        blocked: why the group must stay as it is (None when it can be pruned).
    """

    root: str
    module: nn.Module
    channels: int
    units: List[List[int]]
    members: Dict[str, float]
    blocked: Optional[str] = None
    # (label, channels, fewest to keep, unit -> channels it holds) per coupled tensor
    limits: List[Tuple[str, int, int, Dict[int, int]]] = field(default_factory=list, repr=False)

    def granularity(self, round_to: int) -> int:
        """Units per step so that every member's channel count stays a multiple of round_to."""
        step = 1
        for per_unit in self.members.values():
            if per_unit != int(per_unit):
                return 1
            need = round_to // math.gcd(round_to, int(per_unit))
            step = step * need // math.gcd(step, need)
        return step


class Surgeon:
    """One model, its torch-pruning dependency graph, and safe pruning of coupled groups.

    Every pruned group is checked by a forward pass on `example_inputs`; a group whose
    pruning fails is restored and described in `notes` (and logged).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor,
                 ignored: Sequence[str] = (), notes: Optional[List[str]] = None,
                 criterion: Optional[Criterion] = None) -> None:
        self.model = model
        self.criterion = criterion  # told of every pruned group, so its statistics stay aligned
        self.example_inputs = example_inputs
        self.notes = notes if notes is not None else []
        self.ignored = _ignored_names(model, ignored)
        self.head = head_layer(model)
        self.modules = dict(model.named_modules())
        self.names = {m: n for n, m in self.modules.items()}
        self.layers = dict(prunable_layers(model, ignored))
        self._shape = self._forward_shape()
        self._build()

    def _build(self) -> None:
        was_training = self.model.training
        self.graph = tp.DependencyGraph().build_dependency(
            self.model, example_inputs=self.example_inputs, verbose=False)
        self.model.train(was_training)

    @torch.no_grad()
    def _forward_shape(self) -> Tuple[int, ...]:
        was_training = self.model.training
        if was_training:  # callers prune in eval mode; toggling walks every module
            self.model.eval()
        try:
            return tuple(self.model(self.example_inputs).shape)
        finally:
            if was_training:
                self.model.train()

    def note(self, text: str) -> None:
        log.warning(text)
        self.notes.append(text)

    def full_group(self, name: str):
        """torch-pruning's group of every channel of `name` (what criteria score)."""
        module = self.modules[name]
        return self.graph.get_pruning_group(module, _out_fn(module), list(range(out_channels(module))))

    def group(self, name: str) -> CoupledGroup:
        """The coupled group of `name` as the model stands now."""
        module = self.modules[name]
        n = out_channels(module)
        self.full_group(name)  # refreshes torch-pruning's concat/slice index mappings
        visits = list(_visits(self.graph, module, _out_fn(module), n))
        return _analyze(self, name, module, n, visits)

    def groups(self) -> Iterator[CoupledGroup]:
        """One group per set of coupled prunable layers, in module order, analysed lazily
        (pruning one group between two yields is fine)."""
        covered: Set[str] = set()
        for name in list(self.layers):
            if name in covered:
                continue
            group = self.group(name)
            covered.update(group.members)
            yield group

    def select(self, group: CoupledGroup, order: Sequence[int], count: int,
               exact_channels: Optional[int] = None) -> List[int]:
        """Up to `count` units from `order` that can go without leaving a coupled tensor too
        few channels; with exact_channels, only units whose root channels fit in that many."""
        left = [total for _, total, _, _ in group.limits]
        chosen: List[int] = []
        removed = 0
        for u in order:
            if len(chosen) >= count:
                break
            size = len(group.units[u])
            if exact_channels is not None and removed + size > exact_channels:
                continue
            after = [n - per.get(u, 0) for n, (_, _, _, per) in zip(left, group.limits)]
            if all(n >= least for n, (_, _, least, _) in zip(after, group.limits)):
                chosen.append(u)
                removed += size
                left = after
        return chosen

    def drop(self, group: CoupledGroup, units: Sequence[int]) -> int:
        """Remove these units of the group; returns root channels removed (0 if rolled back)."""
        idxs = sorted(i for u in units for i in group.units[u])
        if not idxs:
            return 0
        saved = _snapshot(self.model)
        try:
            pruned = self.graph.get_pruning_group(group.module, _out_fn(group.module), idxs)
            pruned.prune()
            shape = self._forward_shape()
            if shape != self._shape:
                raise RuntimeError(f"the model output changed from {self._shape} to {shape}")
        except Exception as exc:  # any failure of a third-party op: restore and report, the safety net
            _restore(saved)
            self._build()
            self.note(f"{group.root}: skipped, pruning it breaks the model ({_first_line(exc)}); "
                      f"pass --ignore {group.root} to silence this")
            return 0
        if self.criterion is not None:
            self.criterion.pruned(pruned)
        return len(idxs)

    def scores(self, group: CoupledGroup, criterion: Criterion) -> torch.Tensor:
        """Mean criterion score of each unit (low = pruned first)."""
        per_channel = criterion(self.full_group(group.root)).float()
        unit_of = [0] * group.channels
        for k, unit in enumerate(group.units):
            for i in unit:
                unit_of[i] = k
        index = torch.tensor(unit_of)
        sums = torch.zeros(len(group.units)).index_add_(0, index, per_channel)
        return sums / torch.tensor([float(len(u)) for u in group.units])


def _visits(graph: tp.DependencyGraph, module: nn.Module, fn: Callable, n: int):
    """Every (node, handler, indices) torch-pruning reaches from all channels of `module`,
    before it merges them: merging keeps one root per channel and hides which root
    channels reach the same channel (a coupling cycle, as in GhostNet)."""
    start = tuple(_helpers._HybridIndex(idx=i, root_idx=i) for i in range(n))
    stack = [(graph.module2node[module], fn, start)]
    seen = set()
    while stack:
        node, handler, idxs = stack.pop()
        if (node, handler, idxs) in seen:
            continue
        seen.add((node, handler, idxs))
        yield node, handler, idxs
        for dep in node.dependencies:
            if dep.is_triggered_by(handler):
                new = list(idxs)
                for mapping in dep.index_mapping:
                    if mapping is not None:
                        new = mapping(new)
                if new:
                    stack.append((dep.target, dep.handler, tuple(new)))


class _Units:
    """Union-find over root channels: channels that must be removed together."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> List[List[int]]:
        out: Dict[int, List[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return sorted(out.values(), key=lambda u: u[0])


def _analyze(surgeon: Surgeon, name: str, module: nn.Module, n: int, visits) -> CoupledGroup:
    """Units, members, limits and blocking reason of the group rooted at `name`."""
    graph = surgeon.graph
    tensors: Dict[Tuple[object, str], Dict[int, int]] = {}  # (node, dim) -> local idx -> a root
    units = _Units(n)
    for node, handler, idxs in visits:
        local = tensors.setdefault((node, _dim(graph, handler)), {})
        for h in idxs:
            if h.root_idx is None:
                continue
            if h.idx in local:
                units.union(local[h.idx], h.root_idx)  # two root channels reach one channel
            else:
                local[h.idx] = h.root_idx
    blocked = _tie_grouped_convs(graph, tensors, units)
    unit_list = units.groups()
    unit_of = {i: k for k, u in enumerate(unit_list) for i in u}
    group = CoupledGroup(name, module, n, unit_list, {})
    for (node, dim), local in tensors.items():
        blocked = blocked or _blocking(surgeon, node, dim)
        _add_limits(surgeon, group, node, dim, local, unit_of)
    group.blocked = blocked
    return group


def _dim(graph: tp.DependencyGraph, handler: Callable) -> str:
    # BatchNorm, depthwise convs and element-wise ops use one function for both sides
    return "out" if graph.is_out_channel_pruning_fn(handler) else "in"


def _is_grouped(m: object) -> bool:
    """A grouped conv that torch-pruning does not treat as depthwise."""
    return isinstance(m, _CONV) and m.groups > 1 and m.groups != m.out_channels


def _tie_grouped_convs(graph, tensors, units: _Units) -> Optional[str]:
    """Tie each position across the groups of grouped convs; a reason if impossible."""
    for (node, dim), local in tensors.items():
        m = node.module
        if not _is_grouped(m):
            continue
        size = m.out_channels if dim == "out" else m.in_channels
        block = size // m.groups
        if len(local) != size:
            return (f"grouped conv {node._name} (groups={m.groups}) also reads channels from "
                    f"other layers, so whole positions of its groups cannot be removed from here")
        for idx, root in local.items():
            units.union(root, local[idx % block])
    return None


def _blocking(surgeon: Surgeon, node, dim: str) -> Optional[str]:
    m = node.module
    if isinstance(m, tp.ops._OutputOp):
        return "its channels reach the model output"
    name = surgeon.names.get(m) if isinstance(m, nn.Module) else None
    if name in surgeon.ignored:
        return f"coupled with ignored layer {name}"
    if name == surgeon.head and dim == "out":
        return f"coupled with the classifier head {name}"
    return None


def _add_limits(surgeon: Surgeon, group: CoupledGroup, node, dim: str,
                local: Dict[int, int], unit_of: Dict[int, int]) -> None:
    """Record how many channels this tensor holds per unit and how few it may keep."""
    total = _channels_of(surgeon.graph, node, dim)
    if total is None:
        return
    per: Dict[int, int] = {}
    for root in local.values():
        per[unit_of[root]] = per.get(unit_of[root], 0) + 1
    m = node.module
    least = 1
    if _is_grouped(m):  # keep two per group, or the conv would turn depthwise
        least = min(total, 2 * m.groups)
    label = node._name or str(m)
    group.limits.append((label, total, least, per))
    name = surgeon.names.get(m) if isinstance(m, nn.Module) else None
    if dim == "out" and name in surgeon.layers:
        group.members[name] = len(local) / max(1, len(group.units))


def _channels_of(graph: tp.DependencyGraph, node, dim: str) -> Optional[int]:
    try:
        return graph.get_out_channels(node) if dim == "out" else graph.get_in_channels(node)
    except AttributeError:  # dummy ops (add, concat, ...) have no channel count of their own
        return None


def _snapshot(model: nn.Module):
    """Shallow copies of every module's state: torch-pruning replaces tensors, never edits them."""
    return [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)) for m in model.modules()]


def _restore(saved) -> None:
    for m, attrs, params, buffers in saved:
        m.__dict__.update(attrs)
        object.__setattr__(m, "_parameters", params)  # the dicts torch-pruning wrote into
        object.__setattr__(m, "_buffers", buffers)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:160] if lines else "") or type(exc).__name__


# --------------------------------------------------------------------------- pruning

def prune(model: nn.Module, cfg: PruneConfig, example_inputs: torch.Tensor,
          calibration: Optional[Sequence[Batch]] = None, *,
          notes: Optional[List[str]] = None) -> ChannelSpec:
    """Prune `model` in place as `cfg` says; returns the resulting channel spec.

    Args:
        notes: receives one line per layer or group that was skipped or rounded, and why.
    """
    criterion = create_importance(cfg.importance)
    if criterion.needs_data:
        if not calibration:
            raise BadInputError(f"importance {cfg.importance!r} needs calibration data (--data)")
        criterion.prepare(model, calibration)
    if cfg.spec is not None:
        prune_to_spec(model, cfg.spec, example_inputs, criterion, cfg.ignored, notes=notes)
    else:
        _prune_ratio(model, cfg, example_inputs, criterion, notes)
    return channel_spec(model)


def _prune_ratio(model: nn.Module, cfg: PruneConfig, example_inputs: torch.Tensor,
                 criterion: Criterion, notes: Optional[List[str]]) -> None:
    """Remove `cfg.ratio` of every coupled group's units, whole units, lowest scores first."""
    was_training = model.training
    model.eval()
    surgeon = Surgeon(model, example_inputs, cfg.ignored, notes, criterion)
    for group in surgeon.groups():
        if group.blocked:
            surgeon.note(f"{group.root}: skipped, {group.blocked}")
            continue
        n = len(group.units)
        keep = round_channels(n * (1.0 - cfg.ratio), group.granularity(cfg.round_to), n)
        if n == 1 and group.channels > 1 and cfg.ratio > 0:
            surgeon.note(f"{group.root}: skipped, its {group.channels} channels are tied into one "
                         "set (a grouped or depthwise-multiplier conv reads them)")
        if keep >= n:
            continue
        order = torch.argsort(surgeon.scores(group, criterion), stable=True).tolist()
        chosen = surgeon.select(group, order, n - keep)
        if len(chosen) < n - keep:
            surgeon.note(f"{group.root}: kept {n - len(chosen)} of {n} channel sets instead of "
                         f"{keep}: a coupled layer would be left too few channels")
        surgeon.drop(group, chosen)
    model.train(was_training)


def group_roots(model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[str] = ()) -> List[str]:
    """The root layer of every coupled group that can be pruned, in module order: the
    decisions a layer-wise search makes (one keep ratio per root)."""
    surgeon = Surgeon(model, example_inputs, ignored)
    return [g.root for g in surgeon.groups() if not g.blocked and len(g.units) > 1]


def prune_group_ratios(model: nn.Module, ratios: Dict[str, float], example_inputs: torch.Tensor,
                       round_to: int = 1, ignored: Sequence[str] = ()) -> nn.Module:
    """A scratch copy of `model` in which each coupled group keeps `ratios[root]` of its units
    (whole units, rounded to `round_to`; trailing units go): its channel spec is consistent for
    coupled layers by construction. Groups not named keep their channels."""
    trial = copy.deepcopy(model).eval()
    surgeon = Surgeon(trial, example_inputs, ignored)
    for group in surgeon.groups():
        if group.blocked or group.root not in ratios:
            continue
        n = len(group.units)
        keep = round_channels(n * float(ratios[group.root]), group.granularity(round_to), n)
        if keep < n:
            trailing = sorted(range(n), key=lambda u: -group.units[u][-1])
            surgeon.drop(group, surgeon.select(group, trailing, n - keep))
    return trial


def spec_for_group_ratios(model: nn.Module, ratios: Dict[str, float], example_inputs: torch.Tensor,
                          round_to: int = 1, ignored: Sequence[str] = ()) -> ChannelSpec:
    """The channel spec `prune_group_ratios` leaves."""
    return channel_spec(prune_group_ratios(model, ratios, example_inputs, round_to, ignored))


def prune_to_spec(model: nn.Module, spec: ChannelSpec, example_inputs: torch.Tensor,
                  criterion: Optional[Criterion] = None, ignored: Sequence[str] = (), *,
                  notes: Optional[List[str]] = None) -> None:
    """Remove channels until every layer in `spec` has the channels it names.

    Without a criterion the trailing channels go: that is how a saved pruned model is
    rebuilt (only the shapes have to match before its weights are loaded). A count that
    whole units cannot reach is rounded up and noted; coupled layers asking for different
    counts are an error.
    """
    layers = dict(prunable_layers(model, ignored))
    unknown = sorted(set(spec) - set(layers))
    if unknown:
        raise BadInputError(f"channel spec names layers that are not prunable: {', '.join(unknown[:5])}"
                            " (depthwise convs, the classifier head and ignored layers have no entry)")
    was_training = model.training
    model.eval()
    surgeon = Surgeon(model, example_inputs, ignored, notes, criterion)
    expected = dict(spec)
    for name in layers:
        if name in spec and spec[name] < out_channels(layers[name]):
            expected[name] = _prune_layer(surgeon, name, spec[name], criterion)
    model.train(was_training)
    _check_spec(model, expected)


def _prune_layer(surgeon: Surgeon, name: str, keep: int, criterion: Optional[Criterion]) -> int:
    """Prune one layer's group to `keep` root channels, or the nearest count above it that
    whole units reach; returns the count it aims at."""
    group = surgeon.group(name)
    current = group.channels
    if group.blocked:
        surgeon.note(f"{name}: kept at {current} channels (asked {keep}), {group.blocked}")
        return current
    if criterion is None:  # trailing units first
        order = sorted(range(len(group.units)), key=lambda u: -group.units[u][-1])
    else:
        order = torch.argsort(surgeon.scores(group, criterion), stable=True).tolist()
    chosen = surgeon.select(group, order, len(group.units), exact_channels=current - keep)
    removed = sum(len(group.units[u]) for u in chosen)
    if removed < current - keep:
        sizes = sorted({len(u) for u in group.units})
        surgeon.note(f"{name}: kept {current - removed} channels (asked {keep}): its channels go "
                     f"in sets of {'/'.join(map(str, sizes))} (grouped or coupled layers)")
    return current - surgeon.drop(group, chosen)


def _check_spec(model: nn.Module, spec: ChannelSpec) -> None:
    got = channel_spec(model)
    wrong = {k: (v, got[k]) for k, v in spec.items() if got.get(k) != v}
    if wrong:
        name, (want, have) = next(iter(wrong.items()))
        raise BadInputError(
            f"channel spec is inconsistent: {name} wants {want} channels but its coupled "
            f"layers give it {have} ({len(wrong)} layer(s) disagree); give coupled layers "
            f"the same count or leave {name} out of the spec")


def score_channels(model: nn.Module, layer: str, importance: str, example_inputs: torch.Tensor,
                   calibration: Optional[Sequence[Batch]] = None) -> torch.Tensor:
    """Scores of every output channel of `layer` (its whole coupled group), low = pruned first."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise BadInputError(f"no layer named {layer!r}")
    criterion = create_importance(importance)
    if criterion.needs_data:
        criterion.prepare(model, calibration or [])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    return criterion(graph.get_pruning_group(module, _out_fn(module), list(range(out_channels(module)))))
