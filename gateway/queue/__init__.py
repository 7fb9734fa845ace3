"""Async tasks (SPEC 10)."""
