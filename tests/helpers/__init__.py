"""Shared test helpers: small C programs built by the test session (see cbuild.py)."""
