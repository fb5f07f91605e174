"""`edgeprune emulate up|down|status NAME`: emulated targets behind a real sshd (or adb stand-in)."""
from __future__ import annotations

import argparse

from edgeprune.commands._common import emit_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("emulate", help="start, stop or inspect an emulated target (needs root)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("name", help="emulated target name, e.g. emu-rpi4")
    p.add_argument("--profile", help="profile YAML file instead of a shipped target")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeprune.targets import emulate, load_target
    if args.action == "up":
        target = load_target(args.profile or args.name)
        state = emulate.up(target)
    elif args.action == "down":
        state = emulate.down(args.name)
    else:
        state = emulate.status(args.name)
    if args.json:
        emit_json(state)
    else:
        print(_line(args.action, args.name, state))
    return 0 if state.get("running") or args.action != "status" else 1


def _line(action: str, name: str, state: dict) -> str:
    if not state.get("running"):
        return f"{name}: not running" + (" (stopped)" if state.get("stopped") else "")
    where = state.get("adb_server") or f"ssh {state.get('user')}@127.0.0.1:{state.get('port')}"
    cfs = state.get("cfs") or [0, 1]
    return (f"{name}: running at {where}, cpu {cfs[0] / cfs[1]:.2f} core (period {cfs[1]} us), "
            f"memory {state.get('memory_mb')} MB, pid {state.get('pid')}")
