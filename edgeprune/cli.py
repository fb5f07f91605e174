"""The `edgeprune` command line: a thin layer over the Python API.

Each verb lives in edgeprune/commands/<verb>.py with `register(subparsers)`; this module
builds the parser and turns EdgePruneError into one line on stderr and an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Sequence

from edgeprune.errors import EdgePruneError

# The order here is the order of `edgeprune --help`.
COMMANDS = (
    "models", "train", "analyze", "prune", "export", "targets", "emulate",
    "profile", "verify", "compress", "demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.exit(2, f"edgeprune: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgeprune", description="Compress CNNs for edge devices, device in the loop.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"edgeprune.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"edgeprune.commands.{name}":
                raise
            continue  # a verb not built yet
        module.register(sub)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    """`kill`/`timeout` end us like Ctrl-C does, so emulators and temp files are cleaned up."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return int(args.func(args) or 0)
    except EdgePruneError as exc:
        print(f"edgeprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgeprune ... | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
