"""The store: one root holding content-addressed objects and every experiment.

``Store`` checks the root's format marker and finds experiments; the layers
below it are ``root`` (bytes under keys, atomic writes, local or fsspec),
``objects`` (content-addressed images and texts) and ``experiment`` (one
experiment's metadata, journal and Zarr arrays). See docs/store.md.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from .. import settings
from ..errors import StoreError, StoreUnavailable, UnknownExperiment
from .experiment import Experiment
from .objects import ObjectStore
from .root import LocalRoot, StoreRoot, open_root, probe_root

STORE_FORMAT = 1
MARKER = "panicflow-store.json"
DEFAULT_STORE = "./panicflow-store"


def default_location() -> str:
    """The store used when none is given: the ``panicflow.store`` setting (``$PANICFLOW_STORE``,
    ``DASK_PANICFLOW__STORE``, Dask's YAML files; default ``./panicflow-store``: docs/settings.md)."""
    return settings.get("store")


class Store:
    """A panicflow store at a local folder or fsspec URL."""

    def __init__(self, location: str | os.PathLike | None = None, create: bool = False, *, lazy: bool = False) -> None:
        """Open the store; ``create`` makes a new one where there is none (with ``lazy``, only
        checked here and written by ``ensure_created``, so that a failure before it leaves nothing)."""
        location = str(location) if location is not None else default_location()
        if "://" not in location:
            path = Path(location).expanduser()
            if path.exists() and not path.is_dir():
                raise StoreError(f"store: {path} is a file, not a folder; pass --store a folder path")
        try:
            self.root: StoreRoot = open_root(location)
        except ValueError as exc:
            raise StoreError(f"store: cannot use {location!r}: {exc}") from None
        except ImportError as exc:  # e.g. s3:// without s3fs
            raise StoreError(f"store: {location!r} needs a package that is not installed: {exc}") from None
        # local paths absolute: workers started in another folder open this location too
        self.location = self.root.path if isinstance(self.root, LocalRoot) else location
        self.objects = ObjectStore(self.root)
        self._pending_marker = False
        self._check_marker(create, lazy)

    def _check_marker(self, create: bool, lazy: bool = False) -> None:
        try:
            raw = self.root.read_bytes(MARKER)
        except FileNotFoundError:
            if self.root.list("") or self.root.list_dirs(""):
                raise StoreError(
                    f"store: {self.location} is not empty and has no {MARKER}; it is not a panicflow store, choose another --store"
                ) from None
            if not create:
                raise StoreUnavailable(f"store: no panicflow store at {self.location}; run an experiment there first or pass --store")
            self._pending_marker = True
            if not lazy:
                self.ensure_created()
            return
        except (NotADirectoryError, PermissionError) as exc:
            raise StoreUnavailable(f"store: cannot read {self.location}: {exc}") from None
        try:
            marker = json.loads(raw)
            version = marker["version"]
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"store: {self.location}/{MARKER} is damaged; it should be a JSON object with a version") from None
        if version != STORE_FORMAT:
            raise StoreError(
                f"store: {self.location} has store format {version}, this panicflow reads format {STORE_FORMAT}; "
                "use the panicflow version that wrote it"
            )

    def ensure_created(self) -> None:
        """Write the format marker of a store opened with ``create=True, lazy=True``, if still missing."""
        if not self._pending_marker:
            return
        try:
            marker = {"format": "panicflow-store", "version": STORE_FORMAT}
            self.root.write_bytes(MARKER, json.dumps(marker).encode())
        except OSError as exc:
            raise StoreError(f"store: cannot write to {self.location}: {exc.strerror or exc}") from None
        self._pending_marker = False

    # ------------------------------------------------------------- experiments
    def experiment_ids(self) -> list[str]:
        """Ids of fully created experiments (those with experiment.json)."""
        return [d for d in self.root.list_dirs("experiments") if self.root.exists(f"experiments/{d}/experiment.json")]

    def experiment(self, experiment_id: str) -> Experiment:
        """The experiment with this id, or the only one whose id starts with it."""
        ids = self.experiment_ids()
        if experiment_id in ids:
            return Experiment(self.root, experiment_id)
        matches = [i for i in ids if experiment_id and i.startswith(experiment_id)]
        if len(matches) == 1:
            return Experiment(self.root, matches[0])
        if matches:
            raise UnknownExperiment(f"experiment id {experiment_id!r} is ambiguous: {', '.join(matches[:5])}")
        raise UnknownExperiment(f"no experiment {experiment_id!r} in {self.location}; `panicflow experiment list` shows them")

    def new_experiment_id(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{secrets.token_hex(3)}"


__all__ = ["Store", "StoreRoot", "ObjectStore", "Experiment", "open_root", "probe_root", "default_location"]
