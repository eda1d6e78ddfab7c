"""Slices: size, location and shape of the ground truth, and metadata subgroups."""
