"""History: every candidate of a run, one JSON line each in history.jsonl, replayed by
--resume. Appends are flushed and fsynced; a torn last line (a run killed mid-write) is
dropped on reading, so a resumed run continues from the last whole candidate."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

from edgeprune._io import atomic_write_bytes
from edgeprune.search.candidate import Candidate


class History:
    """Candidates in the order they were evaluated; the first is the baseline."""

    def __init__(self, path: Optional[Union[str, Path]] = None,
                 candidates: Optional[List[Candidate]] = None) -> None:
        self.path = Path(path) if path is not None else None
        self.candidates: List[Candidate] = list(candidates or [])

    @classmethod
    def read(cls, path: Union[str, Path], keep: Callable[[Candidate], bool] = lambda c: True) -> "History":
        """The whole lines of `path` that `keep` accepts (e.g. those whose state file exists)."""
        history = cls(path)
        if history.path.exists():
            for line in history.path.read_text().splitlines():
                try:
                    candidate = Candidate.from_json(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    break
                if not keep(candidate):
                    break
                history.candidates.append(candidate)
        return history

    def rewrite(self) -> None:
        """Write the file anew with exactly these candidates (a torn or dropped tail goes)."""
        if self.path is not None:
            atomic_write_bytes(self.path, "".join(c.to_json() + "\n" for c in self.candidates).encode())

    def append(self, candidate: Candidate) -> None:
        self.candidates.append(candidate)
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(candidate.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @property
    def baseline(self) -> Candidate:
        return self.candidates[0]

    @property
    def next_iteration(self) -> int:
        return len(self.candidates)

    def at(self, fidelity: str) -> List[Candidate]:
        return [c for c in self.candidates[1:] if c.fidelity == fidelity]

    def measured(self) -> List[Candidate]:
        """The fine-tuned, measured candidates (not the baseline, not latency probes)."""
        return self.at("measure")

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)
