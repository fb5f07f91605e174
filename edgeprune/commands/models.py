"""`edgeprune models`: list the zoo."""
from __future__ import annotations

from edgeprune.commands._common import emit_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.models import list_models, model_family

    models = [{"name": n, "family": model_family(n)} for n in list_models()]
    if args.json:
        emit_json({"models": models})
    else:
        for m in models:
            print(f"{m['name']:<16} {m['family']}")
    return 0
