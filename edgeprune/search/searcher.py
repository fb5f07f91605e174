"""Searcher: the ask/tell interface every search method implements (the convention of
black-box optimizers such as Optuna and nevergrad), and the context a method may read.

    proposals = searcher.ask(history)      # what to evaluate next, each at a fidelity
    candidates = [evaluator.evaluate(p, ...) for p in proposals]
    searcher.tell(candidates)
    ... until searcher.done(history)

A method never talks to a target: it reads the trained model, calibration batches, the
policy and the history, and proposes. Methods that replay their state from the history
(both built-in ones do) resume for free. Nothing may assume candidates come back in order.
The registry of methods is edgeprune.search.methods.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.search.candidate import Candidate
from edgeprune.search.history import History
from edgeprune.search.policy import Policy
from edgeprune.search.proposal import Proposal


@dataclass
class SearchContext:
    """What a method may read. `load_state(i)` gives a measured candidate's fine-tuned model.

    Args:
        round_to, ignored: the user's pruning constraints (every spec must respect them).
        options: the method's own settings, as given (`--method-option`, the Python call).
        predict_latency: a model's p50 (ms) predicted by the target's latency table, anchored at
            the measured baseline; None (or returning None) where there is no table.
        channel_multiple: the channel multiple that table was built and checked on.
    """

    model: nn.Module
    input_shape: Tuple[int, int, int]
    calibration: Sequence[Any]
    policy: Policy
    precision: str = "fp32"
    round_to: int = 1
    ignored: Tuple[str, ...] = ()
    seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)
    load_state: Callable[[int], nn.Module] = lambda i: None
    log: Callable[[str], None] = lambda message: None
    predict_latency: Optional[Callable[[nn.Module], Optional[float]]] = None
    channel_multiple: int = 1

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    def state(self, iteration: Optional[int]) -> nn.Module:
        """A scratch copy of the baseline (None or 0) or of a measured candidate's model."""
        if not iteration:
            return copy.deepcopy(self.model)
        return self.load_state(iteration)


class Searcher:
    """Base of every method: `name`, `paper` and a `Config` dataclass of its settings."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = object

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.cfg = make_config(self.Config, ctx.options, self.name)

    def ask(self, history: History) -> List[Proposal]:
        """Proposals to evaluate next (an empty list ends the search)."""
        raise NotImplementedError

    def tell(self, candidates: List[Candidate]) -> None:
        """The evaluated proposals; methods that replay the history may ignore it."""

    def done(self, history: History) -> bool:
        raise NotImplementedError


def make_config(cls: type, options: Dict[str, Any], method: str) -> Any:
    """The method's Config from user options, naming any option it does not have."""
    if cls is object:
        if options:
            raise BadInputError(f"method {method} takes no options, got {', '.join(sorted(options))}")
        return None
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BadInputError(f"method {method} has no option {', '.join(unknown)}; "
                            f"its options: {', '.join(sorted(known))}")
    return cls(**options)
