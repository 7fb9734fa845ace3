"""Billing rules as pure functions of their inputs and the clock."""
