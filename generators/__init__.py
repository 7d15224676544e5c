"""Expansion strategies: one module each, plain Python over records."""
