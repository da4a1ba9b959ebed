"""Backends shipped inside imageworks-core (registered through its own entry points)."""
