"""Progress bars on stderr: tqdm on a terminal, a few plain lines everywhere else.

tqdm redraws with carriage returns and escape codes, which turn CI logs and files that
capture stderr into one unreadable line per refresh. When stderr is not a terminal a bar
prints `desc: 40/100 loss=0.31` at most at each quarter (and only when a few seconds have
passed since its last line), plus its final count when it closes.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, Optional

# Plain lines no closer together than this: short loops print only their final line.
_MIN_INTERVAL_S = 5.0
_MARKS = (0.25, 0.5, 0.75)


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (where tqdm's redrawing works)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
             enabled: bool = True, initial: int = 0, leave: bool = False) -> Any:
    """A progress bar over `iterable` (or a manual one: `update(n)`), on stderr.

    On a terminal this is `tqdm`; elsewhere an object with the same few methods (iteration,
    update, set_postfix, set_description, close, a context manager) that prints plain lines.
    """
    if enabled and stderr_is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, file=sys.stderr)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return PlainBar(iterable, total, desc, enabled, initial)


def write(message: str) -> None:
    """Print a line on stderr without breaking a tqdm bar that is being drawn."""
    if stderr_is_terminal():
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


class PlainBar:
    """A progress bar for logs: a handful of whole lines, no carriage returns."""

    def __init__(self, iterable: Optional[Iterable], total: Optional[int], desc: str,
                 enabled: bool = True, initial: int = 0, min_interval: float = _MIN_INTERVAL_S):
        self.iterable, self.total, self.desc, self.enabled = iterable, total, desc, enabled
        self.n, self.postfix, self.min_interval = initial, "", min_interval
        self._marks = [m for m in _MARKS if total and initial < m * total]
        self._last, self._printed_n, self._closed = time.monotonic(), None, False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "PlainBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._marks and self.n >= self._marks[0] * self.total:
            while self._marks and self.n >= self._marks[0] * self.total:
                self._marks.pop(0)
            if time.monotonic() - self._last >= self.min_interval:
                self._print()

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are printed at the quarters and on close."""

    def write(self, message: str) -> None:
        write(message)

    def close(self) -> None:
        if not self._closed and self.n != self._printed_n and self.n > 0:
            self._print()
        self._closed = True

    def line(self) -> str:
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{count}" + (f" {self.postfix}" if self.postfix else "")

    def _print(self) -> None:
        self._last, self._printed_n = time.monotonic(), self.n
        if self.enabled:
            print(self.line(), file=sys.stderr, flush=True)


__all__ = ["PlainBar", "progress", "stderr_is_terminal", "write"]
