"""Helpers shared by CLI verbs: JSON output and progress logging."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def add_target_args(p: argparse.ArgumentParser) -> None:
    """--target NAME or --profile FILE, for verbs that run on one target."""
    p.add_argument("--target", help="target name (see `edgeprune targets list`)")
    p.add_argument("--profile", help="hardware profile YAML file (instead of --target)")


def cli_target(args: argparse.Namespace, verb: str):
    """The Target that --target or --profile names; BadInputError when neither is given."""
    from edgeprune.errors import BadInputError
    from edgeprune.targets import load_target

    if not (args.target or args.profile):
        raise BadInputError(f"{verb} needs --target NAME or --profile FILE")
    return load_target(args.profile or args.target)


def log(message: str) -> None:
    """Progress and notes go to stderr so stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)
