"""JSON APIs: the customer's (public listener) and ops' (admin listener)."""
