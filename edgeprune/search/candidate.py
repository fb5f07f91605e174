"""A Candidate: a Proposal as the Evaluator judged it. One JSON line in history.jsonl.

Latency and memory figures keep their provenance: `source` is device, emulated, predicted
or proxy, and `measurement` holds the full Measurement (runtime, version, threads, runs)
whenever the target was asked. Only a device or emulated figure can meet a budget.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from edgeprune.search.proposal import Proposal

MEASURED = ("device", "emulated")


@dataclass
class Candidate:
    """One evaluated proposal.

    Args:
        iteration: its place in the history (0: the baseline).
        accuracy: validation top-1 in percent (None at the latency fidelity: untrained).
        p50_ms, peak_memory_mb: latency and peak memory; `source` says where they came from.
        baseline_p50_ms: the baseline's p50 in the same interleaved A/B window, if any.
        artifact: the exported file, relative to the run's folder (measured candidates).
        good, met_budget: the Policy's judgement (guard passed; budget met by measurement).
    """

    iteration: int
    proposal: Proposal
    method: str
    accuracy: Optional[float] = None
    params: int = 0
    macs: int = 0
    artifact_bytes: Optional[int] = None
    p50_ms: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    source: str = "proxy"
    measurement: Optional[Dict[str, Any]] = None
    baseline_p50_ms: Optional[float] = None
    baseline_measurement: Optional[Dict[str, Any]] = None
    ab: Optional[Dict[str, Any]] = None
    confirmation_ratios: Optional[List[float]] = None
    artifact: Optional[str] = None
    good: Optional[bool] = None
    met_budget: Optional[bool] = None
    seconds: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def fidelity(self) -> str:
        return self.proposal.fidelity

    @property
    def parent(self) -> Optional[int]:
        return self.proposal.parent

    @property
    def measured(self) -> bool:
        """Latency and memory come from the target itself (device or emulated)."""
        return self.source in MEASURED

    @property
    def shippable(self) -> bool:
        """A fine-tuned, measured candidate with an artifact (or the baseline)."""
        return self.fidelity == "measure" and self.artifact is not None

    def comparable_p50(self, baseline: "Candidate") -> Optional[float]:
        """The p50 on the baseline's scale: a candidate benched interleaved with the baseline
        artifact is rescaled by the baseline p50 of its own window, so candidates measured
        minutes apart compare by their ratios, not by the device's drift in between."""
        if self.p50_ms is None:
            return None
        if self.baseline_p50_ms and baseline.p50_ms:
            return self.p50_ms * baseline.p50_ms / self.baseline_p50_ms
        return self.p50_ms

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["fidelity"] = self.fidelity  # for readers of history.jsonl; ignored on the way back
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Candidate":
        known = {f.name for f in fields(cls)}
        args = {k: v for k, v in d.items() if k in known}
        args["proposal"] = Proposal.from_dict(d["proposal"])
        return cls(**args)

    @classmethod
    def from_json(cls, line: str) -> "Candidate":
        return cls.from_dict(json.loads(line))
