"""Stress tests: a registry of corruptions (and later domain shifts and prompt perturbations)."""
