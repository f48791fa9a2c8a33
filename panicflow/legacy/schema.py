"""Reading a database of the earlier PANIC-TDA tool (SQLite, SQLModel tables), read-only.

The tables and byte formats are those of the tool's last Python version
(reference/panic-tda-python.md section 1): ids are UUIDs as 32 lower-case hex
characters, times naive ISO text, lists JSON text, images WEBP blobs, vectors
raw little-endian float32 blobs, persistence diagrams ``np.savez_compressed``
blobs. Databases exist with and without the later migrations' constraints, so
nothing here assumes a unique (run, sequence_number) or non-null columns.

Rows are read per run through the tables' indexes (``run_id``, ``invocation_id``),
blobs one at a time, so memory follows the longest run, not the database.
"""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UserError

# what the importer needs of each table; other columns are ignored
REQUIRED = {
    "experimentconfig": ("id", "networks", "seeds", "prompts", "embedding_models", "max_length"),
    "run": ("id", "network", "seed", "max_length", "initial_prompt", "experiment_id"),
    "invocation": ("id", "model", "type", "seed", "run_id", "sequence_number", "output_text", "output_image_data"),
    "embedding": ("id", "invocation_id", "embedding_model", "vector"),
    "persistencediagram": ("id", "run_id", "embedding_model", "diagram_data"),
    "clusteringresult": ("id", "embedding_model", "algorithm"),
    "embeddingcluster": ("id", "embedding_id", "clustering_result_id", "medoid_embedding_id"),
}
CORE = ("experimentconfig", "run", "invocation")  # without these it is not the earlier tool's database
# (table, column): a lookup by this column is done once per run or per clustering
INDEXED = (("run", "experiment_id"), ("invocation", "run_id"), ("embedding", "invocation_id"),
           ("persistencediagram", "run_id"), ("embeddingcluster", "embedding_id"),
           ("embeddingcluster", "clustering_result_id"))
# the later migrations' unique constraints (reference 1.10), reported as found
MIGRATION_UNIQUE = {"invocation": ("run_id", "sequence_number"), "persistencediagram": ("run_id", "embedding_model"),
                    "embedding": ("invocation_id", "embedding_model")}
MAX_DIAGRAM_BYTES = 512 * 2**20  # unpacked size of one diagram archive: guards against a zip bomb


def legacy_uuid(value: Any) -> str | None:
    """A UUID column as 32 lower-case hex characters (the tool's form), or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value.strip()).hex
    except ValueError:
        return None


def hyphenated(hex32: str) -> str:
    """The UUID as the tool's analysis code and the papers print it (8-4-4-4-12)."""
    return str(uuid.UUID(hex32))


def time_us(value: Any) -> int | None:
    """A DATETIME column (naive ISO text) as microseconds since 1970, read as UTC; None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1_000_000) if t.year >= 1970 else None


def json_value(value: Any) -> Any:
    """A JSON column, or None when it is not JSON."""
    if not isinstance(value, (str, bytes)):
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def read_vector(blob: Any, dim: int) -> tuple[np.ndarray | None, str]:
    """A ``vector`` blob (raw little-endian float32, no header) as float32, or (None, why not)."""
    if blob is None:
        return None, "null vector"
    if not isinstance(blob, bytes) or len(blob) != 4 * dim:
        size = len(blob) if isinstance(blob, (bytes, str)) else "?"
        return None, f"vector of {size} bytes, not {dim} float32 values"
    v = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if not np.isfinite(v).all():
        return None, "vector with NaN or infinite values"
    return v, ""


def read_diagram(blob: Any) -> tuple[dict[str, np.ndarray] | None, str]:
    """A ``diagram_data`` blob (``np.savez_compressed``) as {key: array}, loaded without pickle.

    Only the keys the tool stores as plain arrays are read (``dgms_<k>``, ``dgms_count``,
    ``entropy``); an archive whose unpacked members exceed ``MAX_DIAGRAM_BYTES`` is refused.
    """
    if blob is None:
        return None, "diagram_data is NULL"
    if not isinstance(blob, bytes):
        return None, "diagram_data is not a blob"
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_DIAGRAM_BYTES:
                return None, f"diagram archive unpacks to more than {MAX_DIAGRAM_BYTES >> 20} MiB"
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            keys = set(npz.files)
            if "dgms_count" in keys:
                count = int(np.asarray(npz["dgms_count"]).reshape(-1)[0])
            else:
                count = sum(1 for k in keys if k.startswith("dgms_") and k[5:].isdigit())
            out = {f"dgms_{k}": npz[f"dgms_{k}"] for k in range(count)}
            if "entropy" in keys:
                out["entropy"] = npz["entropy"]
            return out, ""
    except (ValueError, OSError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        # ValueError includes "Object arrays cannot be loaded when allow_pickle=False"
        return None, f"diagram_data cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


@dataclass(frozen=True)
class InvocationRow:
    rowid: int
    id: str  # 32 hex
    sequence_number: int | None
    model: Any
    type: Any
    seed: Any
    started_us: int | None
    ended_us: int | None
    input_id: str | None
    text: Any  # output_text as stored
    has_image: bool


class LegacyDB:
    """A read-only connection to the earlier tool's database, with the queries the import makes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise UserError(f"legacy database: no such file {str(path)!r}")
        with open(self.path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise UserError(f"legacy database: {str(path)!r} is not an SQLite database")
        self.conn = self._connect()
        # text the tool stored as invalid UTF-8 arrives with lone surrogates, which the checks refuse,
        # instead of an error that would stop the whole cursor
        self.conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
        self.columns = self._columns()
        missing = [t for t in CORE if t not in self.columns]
        if missing:
            raise UserError(f"legacy database: {str(path)!r} has no table {', '.join(missing)}; "
                            "it is not a database of the earlier PANIC-TDA tool")
        for table, cols in REQUIRED.items():
            lacking = [c for c in cols if table in self.columns and c not in self.columns[table]]
            if lacking:
                raise UserError(f"legacy database: table {table} lacks column(s) {', '.join(lacking)}; "
                                "it is not a database of the earlier PANIC-TDA tool (or of a version this import does not know)")
        self.has = {t: t in self.columns for t in REQUIRED}

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error:
            pass
        try:  # a WAL database in a read-only folder: read it as it is on disk
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            raise UserError(f"legacy database: cannot read {str(self.path)!r}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def _columns(self) -> dict[str, set[str]]:
        try:
            tables = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            raise UserError(f"legacy database: cannot read {str(self.path)!r}: {exc}") from None
        return {t: {r[1] for r in self.conn.execute(f'PRAGMA table_info("{t}")')} for t in tables if t in REQUIRED}

    # ------------------------------------------------------------------ schema facts
    def schema_notes(self) -> list[str]:
        """What the summary says about the schema: the migrations' constraints, missing indexes and tables."""
        notes = []
        absent = [f"{t} ({', '.join(cols)})" for t, cols in MIGRATION_UNIQUE.items() if self.has[t] and not self._unique(t, cols)]
        notes.append(f"schema: without the later migrations' unique constraint(s) on {'; '.join(absent)}: duplicates are resolved row by row"
                     if absent else "schema: with the later migrations' unique constraints")
        for t in REQUIRED:
            if not self.has[t]:
                notes.append(f"table {t} is absent: read as empty")
        for table, col in INDEXED:
            if self.has[table] and not self._indexed(table, col):
                notes.append(f"no index on {table}.{col}: every lookup scans the table; on a copy of the database, "
                             f"`CREATE INDEX ix_{table}_{col} ON {table} ({col})` makes the import much faster")
        return notes

    def _unique(self, table: str, columns: tuple[str, ...]) -> bool:
        for row in self.conn.execute(f'PRAGMA index_list("{table}")'):
            if row[2] and tuple(r[2] for r in self.conn.execute(f'PRAGMA index_info("{row[1]}")')) == columns:
                return True
        return False

    def _indexed(self, table: str, column: str) -> bool:
        for row in self.conn.execute(f'PRAGMA index_list("{table}")'):
            cols = [r[2] for r in self.conn.execute(f'PRAGMA index_info("{row[1]}")')]
            if cols and cols[0] == column:
                return True
        return False

    def count(self, table: str) -> int:
        return int(self.conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]) if self.has[table] else 0

    # ------------------------------------------------------------------ experiments and runs
    def experiments(self) -> list[dict[str, Any]]:
        cols = "rowid, id, networks, seeds, prompts, embedding_models, max_length"
        extra = [c for c in ("started_at", "completed_at") if c in self.columns["experimentconfig"]]
        rows = self.conn.execute(f"SELECT {', '.join([cols, *extra])} FROM experimentconfig ORDER BY rowid").fetchall()
        keys = ["rowid", "id", "networks", "seeds", "prompts", "embedding_models", "max_length", *extra]
        return [dict(zip(keys, r)) for r in rows]

    def runs(self, experiment_id: Any) -> list[dict[str, Any]]:
        """The runs of one experiment in creation order (rowid)."""
        rows = self.conn.execute(
            "SELECT rowid, id, network, seed, max_length, initial_prompt FROM run WHERE experiment_id = ? ORDER BY rowid",
            (experiment_id,)).fetchall()
        return [dict(zip(("rowid", "id", "network", "seed", "max_length", "initial_prompt"), r)) for r in rows]

    def experiment_counts(self, experiment_id: Any) -> dict[str, int]:
        """Rows of each table that belong to one experiment (through run.experiment_id)."""
        runs = "SELECT id FROM run WHERE experiment_id = ?"
        q = {
            "run": "SELECT count(*) FROM run WHERE experiment_id = ?",
            "invocation": f"SELECT count(*) FROM invocation WHERE run_id IN ({runs})",
            "embedding": f"SELECT count(*) FROM embedding WHERE invocation_id IN (SELECT id FROM invocation WHERE run_id IN ({runs}))",
            "persistencediagram": f"SELECT count(*) FROM persistencediagram WHERE run_id IN ({runs})",
        }
        return {t: int(self.conn.execute(sql, (experiment_id,)).fetchone()[0]) if self.has[t] else 0 for t, sql in q.items()}

    # ------------------------------------------------------------------ one run
    def invocations(self, run_id: Any) -> list[InvocationRow]:
        """Every invocation row of a run, without image bytes, by (sequence_number, rowid)."""
        has_times = {c for c in ("started_at", "completed_at", "input_invocation_id") if c in self.columns["invocation"]}
        t0 = "started_at" if "started_at" in has_times else "NULL"
        t1 = "completed_at" if "completed_at" in has_times else "NULL"
        inp = "input_invocation_id" if "input_invocation_id" in has_times else "NULL"
        sql = (f"SELECT rowid, id, sequence_number, model, type, seed, {t0}, {t1}, {inp}, output_text, "
               "output_image_data IS NOT NULL FROM invocation WHERE run_id = ? ORDER BY sequence_number, rowid")
        out = []
        for r in self.conn.execute(sql, (run_id,)):
            seq = r[2] if isinstance(r[2], int) and not isinstance(r[2], bool) else None
            out.append(InvocationRow(r[0], legacy_uuid(r[1]) or "", seq, r[3], r[4], r[5], time_us(r[6]), time_us(r[7]),
                                     legacy_uuid(r[8]), r[9], bool(r[10])))
        return out

    def image(self, rowid: int) -> Any:
        row = self.conn.execute("SELECT output_image_data FROM invocation WHERE rowid = ?", (rowid,)).fetchone()
        return row[0] if row else None

    def embeddings(self, run_id: Any) -> Iterator[tuple[str, Any, str, Any]]:
        """(embedding id, invocation id, model, vector blob) of every embedding of a run's invocations, by rowid."""
        if not self.has["embedding"]:
            return iter(())
        sql = ("SELECT e.id, e.invocation_id, e.embedding_model, e.vector FROM invocation i "
               "JOIN embedding e ON e.invocation_id = i.id WHERE i.run_id = ? ORDER BY e.rowid")
        return ((legacy_uuid(r[0]) or "", legacy_uuid(r[1]) or "", r[2], r[3]) for r in self.conn.execute(sql, (run_id,)))

    def diagrams(self, run_id: Any) -> Iterator[tuple[Any, Any]]:
        """(model, diagram blob) of each persistence diagram row of a run, by rowid."""
        if not self.has["persistencediagram"]:
            return iter(())
        sql = "SELECT embedding_model, diagram_data FROM persistencediagram WHERE run_id = ? ORDER BY rowid"
        return iter(self.conn.execute(sql, (run_id,)))

    def assignments(self, run_id: Any) -> Iterator[tuple[str, str, str, str | None]]:
        """(clustering result id, embedding id, invocation id, medoid embedding id) of a run's clustered embeddings."""
        if not (self.has["embeddingcluster"] and self.has["embedding"]):
            return iter(())
        sql = ("SELECT ec.clustering_result_id, e.id, i.id, ec.medoid_embedding_id FROM invocation i "
               "JOIN embedding e ON e.invocation_id = i.id JOIN embeddingcluster ec ON ec.embedding_id = e.id "
               "WHERE i.run_id = ?")
        return ((legacy_uuid(r[0]) or "", legacy_uuid(r[1]) or "", legacy_uuid(r[2]) or "", legacy_uuid(r[3]))
                for r in self.conn.execute(sql, (run_id,)))

    # ------------------------------------------------------------------ clusterings
    def clusterings(self) -> list[dict[str, Any]]:
        if not self.has["clusteringresult"]:
            return []
        cols = ["rowid", "id", "embedding_model", "algorithm"] + [
            c for c in ("parameters", "created_at", "started_at", "completed_at") if c in self.columns["clusteringresult"]]
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM clusteringresult ORDER BY rowid").fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def clustering_members(self, clustering_id: Any) -> Iterator[tuple[Any, Any, int]]:
        """(legacy experiment id, medoid embedding id, members) of one clustering, over its resolvable assignments."""
        if not (self.has["embeddingcluster"] and self.has["embedding"]):
            return iter(())
        sql = ("SELECT r.experiment_id, ec.medoid_embedding_id, count(*) FROM embeddingcluster ec "
               "JOIN embedding e ON e.id = ec.embedding_id JOIN invocation i ON i.id = e.invocation_id "
               "JOIN run r ON r.id = i.run_id WHERE ec.clustering_result_id = ? GROUP BY 1, 2")
        return iter(self.conn.execute(sql, (clustering_id,)).fetchall())

    def clustering_rows(self, clustering_id: Any) -> int:
        return int(self.conn.execute("SELECT count(*) FROM embeddingcluster WHERE clustering_result_id = ?",
                                     (clustering_id,)).fetchone()[0]) if self.has["embeddingcluster"] else 0

    def embedding_location(self, embedding_id: Any) -> tuple[Any, Any, Any] | None:
        """(legacy experiment id, run id, sequence_number) of an embedding, or None."""
        if not self.has["embedding"]:
            return None
        row = self.conn.execute(
            "SELECT r.experiment_id, i.run_id, i.sequence_number FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
            "JOIN run r ON r.id = i.run_id WHERE e.id = ?", (embedding_id,)).fetchone()
        return row

    def run_counts(self, run_ids: list[Any]) -> dict[str, int]:
        """Rows of the invocation, embedding and persistencediagram tables that belong to these runs."""
        out = {"invocation": 0, "embedding": 0, "persistencediagram": 0}
        for run_id in run_ids:
            out["invocation"] += self.conn.execute("SELECT count(*) FROM invocation WHERE run_id = ?", (run_id,)).fetchone()[0]
            if self.has["embedding"]:
                out["embedding"] += self.conn.execute(
                    "SELECT count(*) FROM invocation i JOIN embedding e ON e.invocation_id = i.id WHERE i.run_id = ?",
                    (run_id,)).fetchone()[0]
            if self.has["persistencediagram"]:
                out["persistencediagram"] += self.conn.execute(
                    "SELECT count(*) FROM persistencediagram WHERE run_id = ?", (run_id,)).fetchone()[0]
        return out
