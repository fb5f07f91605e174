"""`edgeprune targets list|show NAME|check NAME|clean NAME [--json]`."""
from __future__ import annotations

import argparse

from edgeprune.commands._common import emit_json, log


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("targets", help="list, show, check hardware targets or clean their model cache")
    p.add_argument("action", choices=["list", "show", "check", "clean"])
    p.add_argument("name", nargs="?", help="target name or profile YAML path (show, check, clean)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeprune.errors import BadInputError
    from edgeprune.targets import list_targets, load_target
    if args.action == "list":
        return _list(args, list_targets, load_target)
    if not args.name:
        raise BadInputError(f"targets {args.action} needs a target NAME")
    target = load_target(args.name)
    if args.action == "show":
        data = target.to_dict()
        emit_json(data) if args.json else print("\n".join(f"{k}: {v}" for k, v in data.items() if v not in (None, {}, [])))
        return 0
    if args.action == "clean":
        return _clean(args, target)
    result = target.check()
    if args.json:
        emit_json(result)
    else:
        print(f"{result['target']}: {'ok' if result['ok'] else 'NOT OK'} ({result['transport']}, "
              f"{'emulated' if result['emulated'] else 'device'}) runtimes {result['runtimes']} "
              f"cpu {result['device'].get('cpu')} x{result['device'].get('cores')}")
        for problem in result["problems"]:
            log(f"  problem: {problem}")
    return 0 if result["ok"] else 1


def _list(args: argparse.Namespace, list_targets, load_target) -> int:
    rows = []
    for name in list_targets():
        t = load_target(name)
        rows.append({"name": t.name, "transport": t.transport, "runtime": t.runtime,
                     "emulated": t.emulated, "description": t.description})
    if args.json:
        emit_json({"targets": rows})
    else:
        for r in rows:
            print(f"{r['name']:<18} {r['transport']:<6} {r['runtime']:<12} {r['description']}")
    return 0


def _clean(args: argparse.Namespace, target) -> int:
    """Empty the device's model cache (models measured before, or that did not fit)."""
    result = {"target": target.name, **target.clean()}
    if args.json:
        emit_json(result)
    else:
        print(f"{target.name}: removed {result['removed']} cached model(s), {result['freed_bytes'] / 1e6:.1f} MB freed")
    return 0
