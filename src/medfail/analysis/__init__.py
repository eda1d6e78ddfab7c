"""medfail.analysis."""
