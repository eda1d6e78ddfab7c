"""medfail.uncertainty."""
