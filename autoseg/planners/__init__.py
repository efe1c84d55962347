"""Experiment planning: target spacing, patch size, network topology and batch size per configuration."""
