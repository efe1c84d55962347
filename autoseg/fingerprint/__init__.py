"""Dataset fingerprint: per-case geometry and foreground intensity statistics."""
