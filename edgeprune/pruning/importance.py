"""Importance criteria: small callables that score the channels of a coupled group.

A criterion sees a torch-pruning Group (every layer whose channels must go together, e.g.
the convs on both sides of a residual add) and returns one score per channel of the group's
root layer; low scores are pruned first. Scores of coupled layers are summed.

Criteria that need data (`taylor`, `activation`) collect per-layer statistics once in
`prepare()` from calibration batches; the others read weights directly.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from edgeprune.errors import BadInputError

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_BN_FN = function.prune_batchnorm_out_channels
_NORM_FNS = (_BN_FN, function.prune_layernorm_out_channels, function.prune_groupnorm_out_channels)
# the pruning functions that remove output channels, the axis that statistics are kept on
_STAT_FNS = _OUT_FNS + (_BN_FN, function.prune_depthwise_conv_out_channels)

Batch = Tuple[torch.Tensor, torch.Tensor]


class Criterion(tp.importance.Importance):
    """Base class: sum per-layer channel scores over a group, aligned on the root's channels."""

    needs_data = False

    def prepare(self, model: nn.Module, batches: Iterable[Batch]) -> None:
        """Collect statistics from calibration batches (criteria that need data override this)."""

    def layer_scores(self, layer: nn.Module, fn: Callable, idxs: List[int]) -> Optional[torch.Tensor]:
        """Scores of `idxs` channels of one layer in the group, or None if it does not count."""
        raise NotImplementedError

    def pruned(self, group) -> None:
        """Told after `group` (a torch-pruning group) was removed; stats criteria re-align."""

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        n = len(group[0].idxs)
        total = torch.zeros(n)
        for item in group:
            scores = self.layer_scores(item.dep.layer, item.dep.pruning_fn, list(item.idxs))
            if scores is None or any(r is None for r in item.root_idxs):
                continue
            total.scatter_add_(0, torch.tensor(item.root_idxs), scores.float().cpu())
        return total


class L1(Criterion):
    """Filter L1 norm (Li et al. 2017, "Pruning Filters for Efficient ConvNets")."""

    p = 1

    def layer_scores(self, layer, fn, idxs):
        if fn not in _OUT_FNS:
            return None
        w = layer.weight.detach()[idxs].flatten(1)
        return w.abs().pow(self.p).sum(1).pow(1.0 / self.p)


class L2(L1):
    """Filter L2 norm."""

    p = 2


class BNScale(Criterion):
    """|gamma| of the BatchNorm after each filter (Liu et al. 2017, "Network Slimming").

    Nets normalized by LayerNorm or GroupNorm (ConvNeXt) are scored by those gammas.
    """

    def layer_scores(self, layer, fn, idxs):
        if fn not in _NORM_FNS or getattr(layer, "weight", None) is None:
            return None
        return layer.weight.detach()[idxs].abs()


class _StatsCriterion(Criterion):
    """A criterion whose per-layer statistics come from calibration data."""

    needs_data = True

    def __init__(self) -> None:
        self.stats: Dict[nn.Module, torch.Tensor] = {}

    def _require_stats(self) -> None:
        if not self.stats:
            raise BadInputError(f"importance {type(self).__name__.lower()!r} needs calibration data")

    def pruned(self, group) -> None:
        # Statistics are per output channel, collected once: drop the removed channels so
        # a layer shared by several groups (a BatchNorm after a DenseNet concat) stays aligned.
        for item in group:
            layer, fn = item.dep.layer, item.dep.pruning_fn
            stats = self.stats.get(layer) if isinstance(layer, nn.Module) else None
            if stats is None or fn not in _STAT_FNS:
                continue
            keep = sorted(set(range(len(stats))) - set(item.idxs))
            self.stats[layer] = stats[keep]


class Taylor(_StatsCriterion):
    """First-order Taylor: |sum of weight x gradient| per filter (Molchanov et al. 2019)."""

    def prepare(self, model, batches):
        model.zero_grad()
        was_training = model.training
        model.eval()
        for x, y in batches:
            nn.functional.cross_entropy(model(x), y).backward()
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.grad is not None:
                self.stats[m] = (m.weight.detach() * m.weight.grad).flatten(1).sum(1).abs()
        model.zero_grad()
        model.train(was_training)

    def layer_scores(self, layer, fn, idxs):
        self._require_stats()
        if fn not in _OUT_FNS or layer not in self.stats:
            return None
        return self.stats[layer][idxs]


class ActivationAttention(_StatsCriterion):
    """Attention mean(|ReLU(A)|^p) of each filter's output map over calibration data.

    From "Adaptive Activation-based Structured Pruning" (Zhao, Jain and Zhao). A filter's
    activation is read after its BatchNorm when it has one (the ReLU input), else at the conv.
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    @torch.no_grad()
    def prepare(self, model, batches):
        self.stats = collect_attention(model, (x for x, _ in batches), self.p)

    def layer_scores(self, layer, fn, idxs):
        self._require_stats()
        if fn not in _OUT_FNS + (_BN_FN,) or layer not in self.stats:
            return None
        return self.stats[layer][idxs]

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        # Prefer BatchNorm outputs (what the ReLU sees); fall back to conv outputs.
        has_bn = any(item.dep.pruning_fn == _BN_FN and item.dep.layer in self.stats for item in group)
        keep = _BN_FN if has_bn else None
        n = len(group[0].idxs)
        total = torch.zeros(n)
        for item in group:
            fn = item.dep.pruning_fn
            if (keep is not None and fn != keep) or (keep is None and fn not in _OUT_FNS):
                continue
            scores = self.layer_scores(item.dep.layer, fn, list(item.idxs))
            if scores is not None and not any(r is None for r in item.root_idxs):
                total.scatter_add_(0, torch.tensor(item.root_idxs), scores.float())
        return total


@torch.no_grad()
def collect_attention(model: nn.Module, inputs: Iterable[torch.Tensor], p: float = 2.0
                      ) -> Dict[nn.Module, torch.Tensor]:
    """Per-channel mean(|ReLU(A)|^p) of every conv, linear and BatchNorm output."""
    sums: Dict[nn.Module, torch.Tensor] = {}
    counts: Dict[nn.Module, int] = {}

    def hook(module, _inp, out):
        a = torch.relu(out.detach()).pow(p)
        # a Linear's features are its last dim (channels-last MLPs as in ConvNeXt)
        channel = a.dim() - 1 if isinstance(module, nn.Linear) else 1
        dims = [d for d in range(a.dim()) if d != channel]
        sums[module] = sums.get(module, 0) + a.mean(dim=dims)
        counts[module] = counts.get(module, 0) + 1

    types = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {m: sums[m] / counts[m] for m in sums}


_CRITERIA: Dict[str, Callable[[], Criterion]] = {
    "l1": L1,
    "l2": L2,
    "bn_scale": BNScale,
    "taylor": Taylor,
    "activation": ActivationAttention,
}


def list_importances(pattern: str = "*") -> List[str]:
    """Names of the registered importance criteria."""
    return sorted(n for n in _CRITERIA if fnmatch.fnmatch(n, pattern))


def create_importance(name: str) -> Criterion:
    """Instantiate a criterion by registry name."""
    if name not in _CRITERIA:
        raise BadInputError(f"unknown importance {name!r}; known: {', '.join(list_importances())}")
    return _CRITERIA[name]()


def register_importance(name: str, factory: Callable[[], Criterion]) -> None:
    """Add a user criterion to the registry."""
    _CRITERIA[name] = factory
