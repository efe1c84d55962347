"""Datasets: the raw layout (nnU-Net v2's), converters from other layouts, synthetic data."""
