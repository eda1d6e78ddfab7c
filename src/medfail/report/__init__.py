"""medfail.report."""
