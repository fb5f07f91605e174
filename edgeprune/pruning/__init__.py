"""Structured channel pruning: importance criteria (a registry) and channel surgery."""
from edgeprune.pruning.importance import (
    ActivationAttention, Criterion, collect_attention, create_importance, list_importances,
    register_importance,
)
from edgeprune.pruning.spec import load_spec, save_spec
from edgeprune.pruning.surgery import (
    ChannelSpec, CoupledGroup, PruneConfig, Surgeon, channel_spec, group_roots, head_layer, is_depthwise,
    out_channels, prunable_layers, prune, prune_group_ratios, prune_to_spec, round_channels, score_channels, spec_for_group_ratios,
    spec_for_ratio,
)

__all__ = [
    "ActivationAttention", "ChannelSpec", "CoupledGroup", "Criterion", "PruneConfig", "Surgeon",
    "channel_spec", "collect_attention", "create_importance", "group_roots", "head_layer", "is_depthwise",
    "list_importances", "load_spec", "out_channels", "prunable_layers", "prune", "prune_group_ratios", "prune_to_spec",
    "register_importance", "round_channels", "save_spec", "score_channels", "spec_for_group_ratios",
    "spec_for_ratio",
]
