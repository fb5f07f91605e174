"""The registry of search methods: name -> module. Each module defines one Searcher subclass
named `Method`; adding a method is its file plus one line here.

    create_searcher("random", ctx) ; list_methods() -> [{"name", "paper", "summary"}]
"""
from __future__ import annotations

import importlib
from typing import Dict, List

from edgeprune.errors import BadInputError

METHODS: Dict[str, str] = {
    "adaptive": "edgeprune.search.methods.adaptive",
    "random": "edgeprune.search.methods.random",
}


def method_class(name: str) -> type:
    if name not in METHODS:
        raise BadInputError(f"unknown search method {name!r}; known: {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name]).Method


def create_searcher(name: str, ctx) -> object:
    """The method `name`, reading `ctx` (a SearchContext)."""
    return method_class(name)(ctx)


def list_methods() -> List[Dict[str, str]]:
    """Every registered method with its paper and a one-line summary."""
    out = []
    for name in sorted(METHODS):
        cls = method_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out.append({"name": name, "paper": cls.paper, "summary": summary})
    return out
