"""Prompt perturbations for promptable segmenters (family ``prompt``)."""
