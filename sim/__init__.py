"""Functional reference models and the cycle-level model of the tile."""
