"""`gateway demo`: an embedded store, a demo upstream and a seeded account."""
