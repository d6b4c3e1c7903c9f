"""The exchanges: the adapter interface, shared wire and REST helpers, the registry, and
one folder per exchange with the same files (see registry.py)."""
