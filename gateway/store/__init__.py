"""Redis: connections, hash-tagged key names, Lua scripts and typed calls on them."""
