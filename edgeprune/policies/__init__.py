"""Pruning policies judged by measured numbers: latency-sensitive, memory-constrained and
accuracy-critical, over the adaptive activation-based pruning of Zhao, Jain and Zhao."""
from edgeprune.policies.adaptive import AdaptiveConfig, plan_threshold, prune_by_threshold
from edgeprune.policies.budget import NO_BUDGET, Budget, parse_budget
from edgeprune.policies.search import POLICIES, Policy, make_policy, search

__all__ = [
    "AdaptiveConfig", "Budget", "NO_BUDGET", "POLICIES", "Policy", "make_policy", "parse_budget",
    "plan_threshold", "prune_by_threshold", "search",
]
