"""Exceptions with a meaning for the user interface.

``UserError`` is anything the user can fix (a bad config, an unknown id, a bad
store path): the CLI prints its lines and exits with status 2. Everything else
is a bug or an environment failure and exits with status 1.
"""

from __future__ import annotations


class PanicflowError(Exception):
    """Base class of panicflow's own errors."""


class UserError(PanicflowError):
    """Something the user can change; ``lines`` are printed one per line."""

    def __init__(self, *lines: str) -> None:
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


class ConfigError(UserError):
    """An experiment config failed validation; one line per problem."""


class StoreError(UserError):
    """The store path or its content cannot be used as asked."""


class UnknownExperiment(UserError):
    """No experiment with that id (or id prefix) in the store."""


class UnknownModel(UserError):
    """A model name that is not in the registry."""
