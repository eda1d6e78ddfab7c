"""Metrics: pure functions on arrays. Imports nothing of medfail but types."""
