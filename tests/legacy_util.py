"""Databases of the earlier PANIC-TDA tool, written the way it wrote them, for the legacy import tests.

The schema is the one SQLModel's ``create_all`` made from the tool's last classes
(reference/panic-tda-python.md section 1): ``constraints=False`` as every fresh database
had it (no unique (run, sequence_number), nullable columns), ``constraints=True`` with the
later migrations' unique indexes and NOT NULL columns (section 1.10). The byte formats are
the tool's: UUIDs as 32 lower-case hex characters, times ``YYYY-MM-DD HH:MM:SS.ffffff``,
lists as JSON, invocation types ``'TEXT'``/``'IMAGE'``, images ``save(format="WEBP",
lossless=True, quality=100)``, vectors ``np.asarray(v, dtype=np.float32).tobytes()``,
diagrams ``np.savez_compressed`` of the ``PersistenceDiagramResultType`` key mapping.

``simulate`` runs the tool's pipeline with its dummy models: runs stage (a fixed-seed run
stops at its first repeated output, texts compared by sha256, images after JPEG quality-30
re-encoding, the repeat kept), embeddings stage (text models on TEXT invocations, image
models on IMAGE ones), persistence diagram stage (giotto-ph ``ripser_parallel(maxdim=2)``
on the raw vectors, persim-style entropy in float32).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import sqlite3
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from PIL import Image

from panicflow.models import REGISTRY, Kind
from panicflow.models.cache import get_model

_TABLES = """
CREATE TABLE experimentconfig (
    networks JSON NOT NULL, seeds JSON NOT NULL, prompts JSON NOT NULL, embedding_models JSON NOT NULL,
    id CHAR(32) NOT NULL, max_length INTEGER NOT NULL, started_at DATETIME, completed_at DATETIME,
    PRIMARY KEY (id));
CREATE TABLE clusteringresult (
    parameters JSON, id CHAR(32) NOT NULL, embedding_model VARCHAR NOT NULL, algorithm VARCHAR NOT NULL,
    created_at DATETIME NOT NULL, started_at DATETIME {nn}, completed_at DATETIME, PRIMARY KEY (id));
CREATE TABLE run (
    network JSON NOT NULL, id CHAR(32) NOT NULL, seed INTEGER NOT NULL, max_length INTEGER NOT NULL,
    initial_prompt VARCHAR NOT NULL, experiment_id CHAR(32) {nn}, PRIMARY KEY (id),
    FOREIGN KEY(experiment_id) REFERENCES experimentconfig (id));
CREATE INDEX ix_run_experiment_id ON run (experiment_id);
CREATE TABLE invocation (
    id CHAR(32) NOT NULL, started_at DATETIME {nn_now}, completed_at DATETIME, model VARCHAR NOT NULL,
    type VARCHAR(5) NOT NULL, seed INTEGER NOT NULL, run_id CHAR(32) NOT NULL, sequence_number INTEGER NOT NULL,
    input_invocation_id CHAR(32), output_text VARCHAR, output_image_data BLOB, PRIMARY KEY (id),
    FOREIGN KEY(run_id) REFERENCES run (id), FOREIGN KEY(input_invocation_id) REFERENCES invocation (id));
CREATE INDEX ix_invocation_run_id ON invocation (run_id);
CREATE INDEX ix_invocation_input_invocation_id ON invocation (input_invocation_id);
CREATE TABLE persistencediagram (
    id CHAR(32) NOT NULL, started_at DATETIME {nn}, completed_at DATETIME, diagram_data BLOB,
    run_id CHAR(32) NOT NULL, embedding_model VARCHAR NOT NULL, PRIMARY KEY (id), FOREIGN KEY(run_id) REFERENCES run (id));
CREATE INDEX ix_persistencediagram_run_id ON persistencediagram (run_id);
CREATE TABLE embedding (
    id CHAR(32) NOT NULL, started_at DATETIME {nn}, completed_at DATETIME, invocation_id CHAR(32) NOT NULL,
    embedding_model VARCHAR NOT NULL, vector BLOB {nn}, PRIMARY KEY (id),
    {unique_embedding}FOREIGN KEY(invocation_id) REFERENCES invocation (id));
CREATE INDEX ix_embedding_invocation_id ON embedding (invocation_id);
CREATE TABLE embeddingcluster (
    id CHAR(32) NOT NULL, embedding_id CHAR(32) NOT NULL, clustering_result_id CHAR(32) NOT NULL,
    medoid_embedding_id CHAR(32), PRIMARY KEY (id),
    CONSTRAINT unique_embedding_clustering UNIQUE (embedding_id, clustering_result_id),
    FOREIGN KEY(embedding_id) REFERENCES embedding (id), FOREIGN KEY(clustering_result_id) REFERENCES clusteringresult (id),
    FOREIGN KEY(medoid_embedding_id) REFERENCES embedding (id));
CREATE INDEX ix_embeddingcluster_embedding_id ON embeddingcluster (embedding_id);
CREATE INDEX ix_embeddingcluster_clustering_result_id ON embeddingcluster (clustering_result_id);
CREATE INDEX ix_embeddingcluster_medoid_embedding_id ON embeddingcluster (medoid_embedding_id);
"""
_MIGRATIONS = """
CREATE UNIQUE INDEX unique_run_sequence_number ON invocation (run_id, sequence_number);
CREATE UNIQUE INDEX unique_run_embedding_model ON persistencediagram (run_id, embedding_model);
"""


def schema(constraints: bool) -> str:
    nn = "NOT NULL" if constraints else ""
    ddl = _TABLES.format(nn=nn, nn_now="NOT NULL DEFAULT (datetime('now'))" if constraints else "",
                         unique_embedding="CONSTRAINT unique_invocation_embedding_model UNIQUE (invocation_id, embedding_model), "
                         if constraints else "")
    return ddl + (_MIGRATIONS if constraints else "")


# ------------------------------------------------------------------------------ byte formats
_last_ms = [0]


def uuid7() -> str:
    """A time-ordered UUID (version 7), as the tool's CHAR(32) column holds it."""
    ms = max(time.time_ns() // 1_000_000, _last_ms[0] + 1)  # strictly increasing, as creation order
    _last_ms[0] = ms
    value = (ms << 80) | (0x7 << 76) | (random.getrandbits(12) << 64) | (0b10 << 62) | random.getrandbits(62)
    return uuid.UUID(int=value).hex


def when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


def webp(image: Image.Image, fast: bool = False) -> bytes:
    """The tool's image bytes (``Invocation.output`` setter); ``fast``: lowest effort, still lossless WEBP."""
    buf = io.BytesIO()
    if fast:
        image.save(buf, format="WEBP", lossless=True, quality=0, method=0)
    else:
        image.save(buf, format="WEBP", lossless=True, quality=100)
    return buf.getvalue()


def vector_blob(v: Any) -> bytes:
    return np.asarray(v, dtype=np.float32).tobytes()


def diagram_blob(value: dict[str, Any]) -> bytes:
    """``PersistenceDiagramResultType.process_bind_param``: a dict as an ``np.savez_compressed`` archive."""
    arrays: dict[str, np.ndarray] = {}
    for key, val in value.items():
        if key == "dgms":
            for i, a in enumerate(val):
                arrays[f"dgms_{i}"] = a
            arrays["dgms_count"] = np.array([len(val)])
        elif isinstance(val, np.ndarray):
            arrays[key] = val
        elif isinstance(val, list) and all(isinstance(a, np.ndarray) for a in val):
            for i, a in enumerate(val):
                arrays[f"{key}_{i}"] = a
            arrays[f"{key}_count"] = np.array([len(val)])
        else:
            arrays[f"{key}_meta"] = np.array([str(val)])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def persim_entropy(dgms: list[np.ndarray]) -> np.ndarray:
    """persim ``persistent_entropy(dgms, keep_inf=False, normalize=False)`` as the tool stored it (float32)."""
    out = []
    for d in dgms:
        d = d[np.isfinite(d[:, 1])]
        lengths = (d[:, 1] - d[:, 0]).astype(np.float32)
        if lengths.size == 0:
            out.append(np.float32(-np.sum(lengths)))  # persim: -sum over no bar, -0.0
            continue
        p = lengths / lengths.sum()
        out.append(np.float32(-np.sum(p * np.log(p))))
    return np.array(out, dtype=np.float32)


def legacy_diagram(points: np.ndarray) -> dict[str, Any]:
    """``tda.giotto_phd``: ripser_parallel on the raw points, maxdim 2, and the entropy."""
    import gph

    dgm = gph.ripser_parallel(np.asarray(points, dtype=np.float32), maxdim=2, return_generators=False, n_threads=1)
    return {"dgms": dgm["dgms"], "entropy": persim_entropy(dgm["dgms"])}


def loop_hash(output: Any) -> str:
    """``get_output_hash``: texts by sha256, images after JPEG quality-30 re-encoding."""
    if isinstance(output, str):
        return hashlib.sha256(output.encode()).hexdigest()
    buf = io.BytesIO()
    output.convert("RGB").save(buf, format="JPEG", quality=30)
    return hashlib.sha256(buf.getvalue()).hexdigest()


# ------------------------------------------------------------------------------ the writer
class LegacyWriter:
    """Rows into a new database of the earlier tool, in its formats."""

    def __init__(self, path: str | os.PathLike, constraints: bool = True) -> None:
        self.conn = sqlite3.connect(path)
        self.conn.executescript(schema(constraints))
        self.clock = datetime(2025, 8, 1, 12, 0, 0)

    def tick(self, seconds: float = 0.5) -> str:
        self.clock += timedelta(seconds=seconds)
        return when(self.clock)

    def insert(self, table: str, **row: Any) -> str:
        row.setdefault("id", uuid7())
        cols = ", ".join(row)
        self.conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        return row["id"]

    def experiment(self, networks, seeds, prompts, embedding_models, max_length) -> str:
        return self.insert("experimentconfig", networks=json.dumps(networks), seeds=json.dumps(seeds),
                           prompts=json.dumps(prompts), embedding_models=json.dumps(embedding_models),
                           max_length=max_length, started_at=self.tick(), completed_at=None)

    def run(self, experiment_id, network, seed, prompt, max_length) -> str:
        return self.insert("run", network=json.dumps(network), seed=seed, max_length=max_length,
                           initial_prompt=prompt, experiment_id=experiment_id)

    def invocation(self, run_id, seq, model, output, seed, input_id=None, **extra) -> str:
        kind = REGISTRY[model].output_kind if model in REGISTRY else Kind.TEXT
        row = {"run_id": run_id, "sequence_number": seq, "model": model, "type": kind.name, "seed": seed,
               "input_invocation_id": input_id, "started_at": self.tick(), "completed_at": self.tick(0.25),
               "output_text": output if isinstance(output, str) else None,
               "output_image_data": webp(output, extra.pop("fast", False)) if isinstance(output, Image.Image)
               else output if isinstance(output, bytes) else None}
        row.update(extra)
        return self.insert("invocation", **row)

    def embedding(self, invocation_id, model, vector) -> str:
        blob = vector if vector is None or isinstance(vector, bytes) else vector_blob(vector)
        return self.insert("embedding", invocation_id=invocation_id, embedding_model=model, vector=blob,
                           started_at=self.tick(0), completed_at=self.tick(0.1))

    def diagram(self, run_id, model, value) -> str:
        blob = value if value is None or isinstance(value, bytes) else diagram_blob(value)
        return self.insert("persistencediagram", run_id=run_id, embedding_model=model, diagram_data=blob,
                           started_at=self.tick(0), completed_at=self.tick(1))

    def clustering(self, model, epsilon=0.4) -> str:
        return self.insert("clusteringresult", embedding_model=model, algorithm="hdbscan",
                           parameters=json.dumps({"cluster_selection_epsilon": epsilon, "allow_single_cluster": True}),
                           created_at=self.tick(0), started_at=self.tick(0), completed_at=self.tick(3))

    def assign(self, embedding_id, clustering_id, medoid_id) -> str:
        return self.insert("embeddingcluster", embedding_id=embedding_id, clustering_result_id=clustering_id,
                           medoid_embedding_id=medoid_id)

    def close(self) -> None:
        self.conn.commit()
        self.conn.close()


# ------------------------------------------------------------------------------ the tool's pipeline
def _generate(model: str, value: Any, seed: int, rng: random.Random) -> Any:
    """One dummy invocation: fixed seeds give the tool's formulas (panicflow's dummies follow them);
    seed -1 drew from the clock or uuid4 in the tool, here from ``rng``."""
    if seed != -1:
        return get_model(model).generate([value], [seed])[0]
    if REGISTRY[model].output_kind is Kind.IMAGE:
        return Image.new("RGB", (256, 256), (rng.randrange(100), 200 + rng.randrange(56), 200 + rng.randrange(56)))
    return f"dummy text caption {rng.getrandbits(32):08x}"


def simulate(w: LegacyWriter, networks, seeds, prompts, embedding_models, max_length, *, rng: random.Random | None = None,
             diagrams: bool = True) -> dict[str, Any]:
    """An experiment as ``perform_experiment`` wrote it. Returns its id and, per run, its id and invocation/embedding ids."""
    rng = rng or random.Random(0)
    eid = w.experiment(networks, seeds, prompts, embedding_models, max_length)
    runs = []
    for network, seed, prompt in itertools.product(networks, seeds, prompts):
        run_id = w.run(eid, network, seed, prompt, max_length)
        invs, value, seen, prev = [], prompt, set(), None
        for seq in range(max_length):
            model = network[seq % len(network)]
            out = _generate(model, value, seed, rng)
            prev = w.invocation(run_id, seq, model, out, seed, prev)
            invs.append((prev, model, out))
            if seed != -1:
                h = loop_hash(out)
                if h in seen:
                    break
                seen.add(h)
            value = out
        runs.append({"id": run_id, "invocations": invs, "embeddings": {}})
    for run in runs:
        for m in embedding_models:
            if m not in REGISTRY:  # a model this panicflow does not have: its embeddings cannot be made here
                continue
            kind = REGISTRY[m].input_kind
            outs = [(i, out) for i, (inv, _, out) in enumerate(run["invocations"])
                    if (kind is Kind.TEXT) == isinstance(out, str)]
            vectors = get_model(m).embed([o for _, o in outs]) if outs else np.zeros((0, REGISTRY[m].dim), np.float32)
            run["embeddings"][m] = [(w.embedding(run["invocations"][i][0], m, v), i, v) for (i, _), v in zip(outs, vectors)]
            if diagrams and len(outs) >= 2:
                w.diagram(run["id"], m, legacy_diagram(np.asarray(vectors)))
    return {"id": eid, "runs": runs}


def cluster(w: LegacyWriter, model: str, runs: list[dict[str, Any]], n_clusters: int = 3, seed: int = 0) -> str:
    """A clustering result over these runs' ``model`` embeddings: k-means-like labels by nearest of a few
    members, the member nearest each centre as its medoid, the farthest tenth as outliers (NULL medoid)."""
    members = [(eid, v) for run in runs for eid, _, v in run["embeddings"].get(model, [])]
    if not members:
        return w.clustering(model)
    x = np.asarray([v for _, v in members], dtype=np.float64)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), size=min(n_clusters, len(x)), replace=False)]
    d = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=2)
    label = d.argmin(axis=1)
    outlier = d.min(axis=1) > np.quantile(d.min(axis=1), 0.9)
    cid = w.clustering(model)
    medoid = {c: members[int(np.flatnonzero(label == c)[d[label == c, c].argmin()])][0] for c in np.unique(label)}
    for (emb_id, _), c, out in zip(members, label, outlier):
        w.assign(emb_id, cid, None if out else medoid[c])
    return cid
