"""Exceptions with a meaning for the user interface.

``UserError`` is anything the user can fix (a bad config, an unknown id, a bad
store path): the CLI prints its lines and exits with status 2. Everything else
is a bug or an environment failure and exits with status 1.
"""

from __future__ import annotations

import errno


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


class PermanentError(PanicflowError):
    """An error that retrying cannot heal: the store missing on a worker, a model not
    installed or its weights missing, an unknown model. Raised on workers; the coordinator
    fails the run at once instead of retrying it (check ``isinstance(exc, PermanentError)``
    on the exception a future raises: Dask re-raises the worker's exception object)."""


class UnknownModel(UserError, PermanentError):
    """A model name that is not in the registry (of this process: a worker started without
    the environment that registers it, e.g. PANICFLOW_TEST_MODELS, says so too)."""


class StoreUnavailable(StoreError, PermanentError):
    """The store cannot be opened here (no store at that path, or it is unreadable)."""


class StoreUnreachable(StoreError):
    """Some workers of the cluster cannot open the store (checked before anything is written)."""


class RunsFailed(PanicflowError):
    """An experiment finished, but some of its runs failed (their model kept raising).

    ``experiment_id``, ``failed`` and ``runs`` say which and how many; the store holds
    every error (``panicflow experiment status``) and resume with ``--retry-failed``
    gives those runs another go.
    """

    def __init__(self, message: str, experiment_id: str = "", failed: int = 0, runs: int = 0) -> None:
        super().__init__(message, experiment_id, failed, runs)
        self.message, self.experiment_id, self.failed, self.runs = message, experiment_id, failed, runs

    def __str__(self) -> str:
        return self.message


# OS errors that say the store stopped accepting writes (disk full, quota, read-only): no retry heals them
STORE_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class StoreIOError(PanicflowError, OSError):
    """The store failed under a running experiment (full, read-only...); the experiment is resumable.

    One line naming the store, the OS error and the resume command; ``experiment_id`` and
    ``store`` say which (``experiment_id`` is empty when the experiment was not created)."""

    experiment_id: str = ""
    store: str = ""


class StoreWriteFailed(PanicflowError, OSError):
    """A worker's write into the store failed with one of ``STORE_WRITE_ERRNOS``.

    The task returns it instead of raising it (``scheduler.store_faults``), so that neither
    Dask's retries nor the coordinator's retry it as a model failure, with a traceback each;
    the coordinator raises it, which stops the experiment with a ``StoreIOError``."""


class Interrupted(PanicflowError):
    """An experiment was stopped on request (SIGTERM, SIGHUP, Ctrl-C, ``cancel()``) and marked
    ``interrupted``; ``resume_experiment(experiment_id)`` finishes it. ``reason`` names the
    request: ``"SIGTERM"``, ``"SIGHUP"``, ``"SIGINT"``, ``"cancel"`` or ``"exit"`` (a submitted
    experiment still running when the interpreter exited: ``panicflow.handle``)."""

    def __init__(self, experiment_id: str, reason: str) -> None:
        self.experiment_id, self.reason = experiment_id, reason
        super().__init__(f"experiment {experiment_id} stopped ({reason}); resume it to finish it")
