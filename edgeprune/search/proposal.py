"""A Proposal: what a search method asks the Evaluator to build and judge.

`spec` is the checkpoint's channel-spec format (output channels per prunable layer; a layer
left out keeps its channels); `precision` optionally names a precision per layer (only what
the target's runtime executes). `parent` is the iteration of the measured candidate whose
weights the spec is applied to (None: the trained baseline), and `importance` the criterion
that chooses which channels go. `fidelity` says how the method wants it judged:

- estimate: the spec on the weights, BatchNorm recalibrated, validation accuracy, cost
  computed (params, MACs, bytes) or predicted (latency); no target involved;
- measure: fine-tuned, exported, MEASURED and kept as a state others can build on;
- latency: shapes only (untrained weights), measured on the target: a point for a latency
  curve, never shipped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from edgeprune.errors import BadInputError

FIDELITIES = ("estimate", "measure", "latency")


@dataclass
class Proposal:
    """A channel spec (and optional per-layer precision) to evaluate at one fidelity."""

    spec: Dict[str, int]
    fidelity: str = "estimate"
    parent: Optional[int] = None
    importance: str = "l1"
    precision: Optional[Dict[str, str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise BadInputError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {self.fidelity!r}")
        bad = {k: v for k, v in self.spec.items() if not isinstance(v, int) or v < 1}
        if bad:
            name, value = next(iter(bad.items()))
            raise BadInputError(f"a proposal's spec gives {name} {value!r} channels: every count must be >= 1")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Proposal":
        return cls(**d)
