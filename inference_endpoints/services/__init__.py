"""Use cases that combine the core and persistence: register, plan, collect."""
