"""Stockade benchmarks; run with ``make bench`` (``python -m bench``)."""
