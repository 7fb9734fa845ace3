"""Webhook deliveries of finished tasks (SPEC 11)."""
