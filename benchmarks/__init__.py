"""Benchmarks behind ``make bench``: speed-ups over peer libraries and engine overheads.

Run ``python -m benchmarks.run_all`` (what ``make bench`` does); it writes ``latest.json``.
"""
