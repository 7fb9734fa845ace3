"""The metered hot path: route, authenticate, price, admit, forward, settle, headers."""
