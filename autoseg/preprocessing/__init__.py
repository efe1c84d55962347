"""Preprocessing: crop to nonzero, normalise, resample to the planned spacing, store per case."""
