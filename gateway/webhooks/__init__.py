"""Task webhooks (SPEC 11): targets, signing, the outbox and its deliverer, the customer API."""
