"""Inference: sliding-window prediction, mapping back to the input grid, ensembles, uncertainty.

The trained model it runs (folds, checkpoints, postprocessing rules, model zips) lives in
:mod:`autoseg.model`, shared with training and model selection.

Modules in data-flow order: :mod:`inputs` (find and read cases), :mod:`sliding_window` (Gaussian-blended windows, mirroring TTA, fold ensemble),
:mod:`uncertainty` (per-pass statistics), :mod:`export` (back to the input geometry),
:mod:`predictor` (the pipeline over cases), :mod:`ensemble` and :mod:`commands` (CLI).
"""
