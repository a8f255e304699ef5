"""Redis: key layout, Lua scripts, and the store the service talks to."""
