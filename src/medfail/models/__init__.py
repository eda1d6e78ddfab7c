"""medfail.models."""
