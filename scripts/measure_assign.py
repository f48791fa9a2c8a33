"""Evidence for `panicflow analyse assign`'s rule: how the frozen assignment (nearest fitted member within its
cluster's largest core distance, clustering.nearest_assign) compares with hdbscan's own approximate_predict and
with a clustering refitted on everything, on held-out real embeddings.

The texts and the embedder are those of scripts/measure_reduce_default.py (all-MiniLM-L6-v2, 384-d): for each
set, the unit vectors are split at random into halves A and B; hdbscan (min_cluster_size 10, prediction_data) is
fitted on A; B is labelled (1) by the frozen rule from A's stored arrays, (2) by hdbscan.approximate_predict, and
(3) by hdbscan refitted on A and B together (B's part of it). Printed per set: the ARI (noise as one more class)
of frozen vs approximate_predict, of each vs the refit, B's noise fraction under each, and the share of A's own
noise vectors that the frozen rule puts in a cluster. One JSON line per set on stdout, a Markdown table on stderr.

    nice -n 10 .venv/bin/python scripts/measure_assign.py [--n 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure_reduce_default import docstrings, dummy_captions, embed, scene_captions  # noqa: E402

from panicflow.analysis import clustering as C  # noqa: E402


def measure(name: str, v: np.ndarray, mcs: int, seed: int = 0) -> dict:
    import hdbscan
    from sklearn.metrics import adjusted_rand_score as ari

    u = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(u))
    a, b = np.sort(perm[: len(u) // 2]), np.sort(perm[len(u) // 2:])
    fit = hdbscan.HDBSCAN(min_cluster_size=mcs, prediction_data=True).fit(u[a])
    p = {"algorithm": "hdbscan", "min_samples": mcs}
    fz = C._frozen(p, (None, fit.labels_.astype(np.int32)), u[a])
    frozen, _ = C.nearest_assign(u[b], fz["feature"], fz["label"], fz["cluster_id"], fz["threshold"])
    approx, _ = hdbscan.approximate_predict(fit, u[b])
    refit = hdbscan.HDBSCAN(min_cluster_size=mcs).fit(u).labels_[b]
    # a stricter variant, for comparison: within the nearest member's own core distance, not its cluster's largest
    from scipy.spatial.distance import cdist

    d = cdist(u[b].astype(np.float64), fz["feature"].astype(np.float64))
    j = d.argmin(axis=1)
    member = np.where(d[np.arange(len(j)), j] <= fz["core_distance"][j], fz["label"][j], -1)
    own, _ = C.nearest_assign(u[a], fz["feature"], fz["label"], fz["cluster_id"], fz["threshold"])
    noise_a = fit.labels_ == -1
    return {"set": name, "n": len(u), "clusters_A": int(fit.labels_.max() + 1), "noise_A": float(noise_a.mean()),
            "ari_frozen_vs_approximate_predict": float(ari(frozen, approx)),
            "ari_frozen_vs_refit": float(ari(frozen, refit)), "ari_approximate_predict_vs_refit": float(ari(approx, refit)),
            "noise_B_frozen": float((frozen == -1).mean()), "noise_B_approximate_predict": float((approx == -1).mean()),
            "noise_B_refit": float((refit == -1).mean()),
            "ari_member_rule_vs_approximate_predict": float(ari(member, approx)), "ari_member_rule_vs_refit": float(ari(member, refit)),
            "noise_B_member_rule": float((member == -1).mean()),
            "A_members_kept": float((own[~noise_a] == fit.labels_[~noise_a]).mean()),
            "A_noise_assigned": float((own[noise_a] >= 0).mean()) if noise_a.any() else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--min-cluster-size", type=int, default=10)
    args = ap.parse_args()
    rows = []
    for name, make in (("dummy captions", dummy_captions), ("scene captions", scene_captions), ("docstrings", docstrings)):
        row = measure(name, embed(make(args.n, 0)), args.min_cluster_size)
        print(json.dumps(row), flush=True)
        rows.append(row)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |", file=sys.stderr)
    print("|" + "---|" * len(keys), file=sys.stderr)
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |", file=sys.stderr)


if __name__ == "__main__":
    main()
