"""Queues (SPEC 10): async tasks and sync requests waiting for a concurrency slot."""
