"""The `edgeprune` command line: a thin layer over the Python API.

Each verb lives in edgeprune/commands/<verb>.py with `register(subparsers)`; this module
builds the parser and turns every error into one line on stderr and an exit code: an
EdgePruneError's own code, 3 for a target or transport that failed, 2 for anything else.
With --json, stdout carries exactly one JSON object then too: {"error": {"type", "message"}}.
EDGEPRUNE_DEBUG=1 adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Optional, Sequence

from edgeprune.errors import EdgePruneError, TargetUnreachableError

# The order here is the order of `edgeprune --help`.
COMMANDS = (
    "models", "train", "analyze", "prune", "export", "targets", "emulate",
    "profile", "verify", "compress", "lut", "methods", "demo",
)
DEBUG_ENV = "EDGEPRUNE_DEBUG"
# Exceptions raised from these packages mean the device or the link to it failed (exit 3).
_TRANSPORT_PACKAGES = ("device_agents", "paramiko")
_MAX_MESSAGE = 400


class UsageError(Exception):
    """A command line argparse refused (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # raised, so main reports it like any other error
        raise UsageError(message)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    as_json = "--json" in argv
    if not debug:
        _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("edgeprune: interrupted", file=sys.stderr)
        if as_json:
            _emit_error("KeyboardInterrupt", "interrupted")
        return 130
    except BrokenPipeError:  # `edgeprune ... | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:  # the promise: one line and an exit code, never a traceback
        return report_error(exc, as_json, debug)


def report_error(exc: BaseException, as_json: bool = False, debug: bool = False) -> int:
    """Print `exc` as one line on stderr (and one JSON object on stdout with --json);
    returns the exit code."""
    kind, message, code = describe_error(exc)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, (EdgePruneError, UsageError)):
        line = message
    else:
        line = f"{kind}: {message}" + ("" if debug else f" (set {DEBUG_ENV}=1 for the traceback)")
    print(f"edgeprune: error: {line}", file=sys.stderr, flush=True)
    if as_json:
        _emit_error(kind, message)
    return code


def _emit_error(kind: str, message: str) -> None:
    json.dump({"error": {"type": kind, "message": message}}, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def describe_error(exc: BaseException) -> tuple:
    """(type name, one-line message, exit code) for any exception."""
    kind = type(exc).__name__
    if isinstance(exc, EdgePruneError):
        return kind, _one_line(str(exc), keep_all=True) or kind, exc.exit_code
    text = _one_line(str(exc), keep_all=False)
    if isinstance(exc, (KeyError, AttributeError)) and not text:
        text = repr(exc)
    code = 3 if _from_transport(exc) else 2
    return kind, text or kind, code


def _one_line(text: str, keep_all: bool) -> str:
    """Our own messages keep all their lines (joined); a library's keep its first."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = "; ".join(lines) if keep_all else lines[0]
    return line if len(line) <= _MAX_MESSAGE else line[:_MAX_MESSAGE - 3] + "..."


def _from_transport(exc: BaseException) -> bool:
    """Whether an unexpected error came out of a transport (its class or where it was raised)."""
    if isinstance(exc, TargetUnreachableError):
        return True
    if type(exc).__module__.split(".")[0] in _TRANSPORT_PACKAGES:
        return True
    # Any frame: a socket error deep in the standard library, called from a transport, counts.
    return any(_in_packages(frame.filename) for frame in traceback.extract_tb(exc.__traceback__))


def _in_packages(filename: str) -> bool:
    parts = os.path.normpath(filename).split(os.sep)
    return any(pkg in parts for pkg in _TRANSPORT_PACKAGES)


def _quiet_libraries() -> None:
    """Warnings, log records and errors in threads from libraries: one line each, no
    traceback, on stderr (EDGEPRUNE_DEBUG=1 leaves them as the libraries print them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    warnings.showwarning = _show_warning
    handler = _StderrHandler()
    handler.setFormatter(_OneLineFormatter("edgeprune: %(name)s: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_edgeprune", False)]
    handler._edgeprune = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    threading.excepthook = _thread_error
    sys.unraisablehook = _unraisable


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = _one_line(str(message), keep_all=False)
    print(f"edgeprune: warning: {category.__name__}: {text}", file=sys.stderr)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a caller may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return _one_line(super().format(record), keep_all=False)


def _thread_error(args) -> None:
    if args.exc_type is SystemExit:
        return
    kind, message, _ = describe_error(args.exc_value)
    print(f"edgeprune: error in a background thread: {kind}: {message}", file=sys.stderr)


def _unraisable(unraisable) -> None:
    kind = type(unraisable.exc_value).__name__
    print(f"edgeprune: warning: ignored {kind}: {_one_line(str(unraisable.exc_value), False)}",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
