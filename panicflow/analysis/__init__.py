"""Analyses of stored experiments: persistent homology (topology.py), and after it
semantic drift (drift.py), diagram distances (distances.py), hdbscan clustering
(clustering.py) and tidy tables (tables.py); docs/analysis.md.

The heavy modules are imported on use: ``from panicflow.analysis import clustering``.
"""
