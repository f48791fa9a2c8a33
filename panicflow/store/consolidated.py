"""Consolidated metadata of an experiment's ``data.zarr``: every node's ``zarr.json`` copied into
the root one, so that a reader opens the whole hierarchy with one read instead of one per node
(xarray's ``open_*`` use it by default, and warn when it is missing).

A stale copy is worse than none: a reader that trusts it sees the old shape of a resized array
(a diagram's ``pair`` axis) or misses a new node (an analysis result), silently. So the rule is:

* it is written only when an experiment is finished (``complete``, or ``failed`` with its runs
  ended), after every data write and before that state, by the coordinator and the legacy import;
* whatever changes the hierarchy's metadata afterwards (a coordinator session, ``upgrade``,
  an analysis result, ``doctor --fix``) first removes it (``drop``), and writes it again when it
  is done if the experiment is finished then (``refresh``; the coordinator when it finishes);
* a crash between the two leaves it missing, never stale: readers then read every node's own
  metadata, and ``panicflow doctor`` reports it (``check``), as it reports a stale one, and
  ``--fix`` writes it again.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import zarr
from zarr.storage import WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

    from .experiment import Experiment

FINISHED = ("complete", "failed")  # the states a coordinator (or an import) ends in
KEY = "consolidated_metadata"


def _root_doc(exp: Experiment) -> dict[str, Any] | None:
    """The root ``zarr.json`` of data.zarr, None when missing or not a JSON object."""
    try:
        doc = json.loads(exp.root.read_bytes(f"{exp.data_key}/zarr.json"))
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def present(exp: Experiment) -> bool:
    doc = _root_doc(exp)
    return doc is not None and bool(doc.get(KEY))


def drop(exp: Experiment) -> None:
    """Remove the consolidated copy before a change of the hierarchy's metadata (one atomic
    rewrite of the root ``zarr.json``; nothing to do where there is none)."""
    doc = _root_doc(exp)
    if doc is None or doc.pop(KEY, None) is None:
        return
    exp.check_owner()
    exp.root.write_bytes(f"{exp.data_key}/zarr.json", json.dumps(doc, indent=2).encode())


def write(exp: Experiment) -> None:
    """Consolidate the hierarchy as it is now into the root ``zarr.json``."""
    data = _consolidated_root(exp)
    exp.check_owner()  # after the walk, right before the write: a fenced owner writes nothing
    exp.root.write_bytes(f"{exp.data_key}/zarr.json", data)


def refresh(exp: Experiment) -> None:
    """After a change of the hierarchy: consolidate again if the experiment is finished (a
    coordinator that is running consolidates when it finishes)."""
    data = _consolidated_root(exp)
    if exp.read_state().get("state") in FINISHED:  # read after the walk: a resume meanwhile has dropped it
        exp.check_owner()
        exp.root.write_bytes(f"{exp.data_key}/zarr.json", data)


def check(exp: Experiment) -> str | None:
    """What is wrong with the consolidated copy (None: absent, or equal to every node's own
    metadata): the nodes it lacks, has in excess, or describes otherwise."""
    if not present(exp):
        return None
    store = exp.root.zarr_store(exp.data_key, read_only=True)
    claimed_root = zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=True)
    claimed = {path: _doc(md) for path, md in claimed_root.metadata.consolidated_metadata.flattened_metadata.items()}
    actual_root = zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=False)
    actual = {path: _doc(node.metadata) for path, node in actual_root.members(max_depth=None, use_consolidated_for_children=False)}
    lacks = sorted(set(actual) - set(claimed))
    extra = sorted(set(claimed) - set(actual))
    differ = sorted(p for p in set(actual) & set(claimed) if actual[p] != claimed[p])
    parts = [f"{what} {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}"
             for what, paths in (("lacks", lacks), ("still lists", extra), ("differs for", differ)) if paths]
    return "; ".join(parts) or None


def _doc(metadata: Any) -> dict[str, Any]:
    """A node's metadata as the JSON its ``zarr.json`` holds, less any consolidated copy."""
    from zarr.core.buffer import default_buffer_prototype

    doc = json.loads(metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
    doc.pop(KEY, None)
    return doc


class _Capture(WrapperStore):
    """A store that reads through and keeps what would be written to the root ``zarr.json``:
    zarr builds the consolidated document, and the caller writes it (after its owner check)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.root_json: bytes | None = None

    async def set(self, key: str, value: Buffer) -> None:
        if key != "zarr.json":
            raise RuntimeError(f"consolidating wrote {key!r}, not the root zarr.json")
        self.root_json = value.to_bytes()


def _consolidated_root(exp: Experiment) -> bytes:
    capture = _Capture(exp.root.zarr_store(exp.data_key))
    with warnings.catch_warnings():
        # "not part of the Zarr format 3 specification": it is zarr-python's, read by zarr-python and xarray
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(capture, zarr_format=3)
    if capture.root_json is None:
        raise RuntimeError(f"experiment {exp.id}: zarr wrote no consolidated metadata")
    return capture.root_json
