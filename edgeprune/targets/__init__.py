"""Targets: devices from hardware profiles, measurements with their provenance, and the cache.

`load_target("rpi4").measure("model.tflite")` is the whole API a policy needs;
`compare(target, a, b)` measures two artifacts interleaved (A/B) for a trustworthy ratio.
"""
from edgeprune.targets.compare import Comparison, compare
from edgeprune.targets.measurement import Measurement
from edgeprune.targets.profile import Target, list_targets, load_target

__all__ = ["Comparison", "Measurement", "Target", "compare", "list_targets", "load_target"]
