"""Targets: devices from hardware profiles, measurements with their provenance, and the cache.

`load_target("rpi4").measure("model.tflite")` is the whole API a policy needs.
"""
from edgeprune.targets.measurement import Measurement
from edgeprune.targets.profile import Target, list_targets, load_target

__all__ = ["Measurement", "Target", "list_targets", "load_target"]
