"""`edgeprune demo`: the main job on built-in defaults, one command, no arguments."""
from __future__ import annotations

from edgeprune.commands._common import emit_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="train, compress on an emulated Pi under 0.5x latency, export, verify")
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.commands.compress import print_summary
    from edgeprune.demo import run_demo

    result = run_demo(args.out)
    if args.json:
        emit_json(result)
    else:
        print_summary(result, args.out)
        print(f"report: {args.out}/report.html (also report.md, pareto.png, result.json)")
    return 0 if result["met"] else 1
