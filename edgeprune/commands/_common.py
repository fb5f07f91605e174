"""Helpers shared by CLI verbs: JSON output and progress logging."""
from __future__ import annotations

import json
import sys
from typing import Any


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def log(message: str) -> None:
    """Progress and notes go to stderr so stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)
