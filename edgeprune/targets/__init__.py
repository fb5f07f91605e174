"""Targets: devices from hardware profiles, sessions that measure on them, measurements with
their provenance, the cache and the host-side lock.

`load_target("rpi4").measure("model.tflite")` is the whole API a policy needs;
`compare(target, a, b)` measures two artifacts interleaved (A/B) for a trustworthy ratio.
target.py holds the data (Target from YAML), session.py the work (DeviceSession).
"""
from edgeprune.targets.measurement import Comparison, Measurement
from edgeprune.targets.session import DeviceSession, compare
from edgeprune.targets.target import Target, list_targets, load_target

__all__ = ["Comparison", "DeviceSession", "Measurement", "Target", "compare", "list_targets", "load_target"]
