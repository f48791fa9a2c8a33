"""Seeing the results: mosaic videos, run timelines, image exports, cluster galleries, report pages.

Each export reads an experiment from the store a run (or a block of steps) at a time, so its
memory does not grow with the experiment (docs/visual.md).
"""
