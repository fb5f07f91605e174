"""`edgeprune methods`: the search methods `compress --method` takes, with their papers."""
from __future__ import annotations

from edgeprune.commands._common import emit_json


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the search methods and their papers")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.search import list_methods

    methods = list_methods()
    if args.json:
        emit_json({"methods": methods})
    else:
        for m in methods:
            print(f"{m['name']:<10} {m['summary']}\n{'':<10} {m['paper']}")
    return 0
