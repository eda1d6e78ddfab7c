"""medfail.slices."""
