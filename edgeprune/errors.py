"""The project's exception types; the CLI turns each into one line and an exit code.

Exit codes follow the CLI contract: 1 the job ran but a budget or check was not met,
2 bad input or usage, 3 target unreachable or failed.
"""
from __future__ import annotations


class EdgePruneError(Exception):
    """Base of every error edgeprune raises on purpose."""

    exit_code = 2


class BadInputError(EdgePruneError):
    """The user's model, data, file, option or profile is wrong."""

    exit_code = 2


class MissingDependencyError(BadInputError):
    """An optional package is not installed; the message names the pip extra."""


class TargetUnreachableError(EdgePruneError):
    """The device cannot be reached, refused us, or failed while working."""

    exit_code = 3


class TargetBusyError(TargetUnreachableError):
    """Another process held the target's lock longer than the lock timeout (exit 3)."""


class DoesNotFitError(EdgePruneError):
    """The model does not fit the device (out of memory or over its limits)."""

    exit_code = 1


class VerificationFailedError(EdgePruneError):
    """An artifact disagrees with its PyTorch reference beyond the tolerance."""

    exit_code = 1


class BudgetNotMetError(EdgePruneError):
    """A compression job finished without meeting its budget."""

    exit_code = 1
