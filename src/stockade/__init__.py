"""Stockade: Distributed Trusted Computing for container clusters."""

__version__ = "0.1.0"
