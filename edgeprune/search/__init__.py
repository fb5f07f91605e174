"""The search wing: a Searcher proposes, the Evaluator builds and judges (estimate or
measure), the Policy with its Budget decides what is good, met and shipped, and the History
records every candidate (history.jsonl, replayed by --resume).

A method is one file in edgeprune/search/methods/ plus one line in its registry.
"""
from edgeprune.search.budget import NO_BUDGET, Budget, parse_budget
from edgeprune.search.candidate import Candidate
from edgeprune.search.evaluator import Evaluator, EvaluatorConfig, Splits, predictor_error
from edgeprune.search.history import History
from edgeprune.search.methods import create_searcher, list_methods
from edgeprune.search.policy import POLICIES, Policy, make_policy
from edgeprune.search.proposal import FIDELITIES, Proposal
from edgeprune.search.searcher import SearchContext, Searcher

__all__ = [
    "Budget", "Candidate", "Evaluator", "EvaluatorConfig", "FIDELITIES", "History", "NO_BUDGET", "POLICIES",
    "Policy", "Proposal", "SearchContext", "Searcher", "Splits", "create_searcher", "list_methods",
    "make_policy", "parse_budget", "predictor_error",
]
