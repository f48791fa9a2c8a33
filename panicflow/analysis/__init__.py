"""Analyses of stored experiments: persistent homology (topology.py), and after it
semantic drift (drift.py), divergence of replicate runs (divergence.py), diagram distances
(distances.py), hdbscan clustering (clustering.py), cluster sequences (sequences.py),
entropy summaries (entropy.py), charts (plots.py) and tidy tables (tables.py); docs/analysis.md.

The heavy modules are imported on use: ``from panicflow.analysis import clustering``.
"""
