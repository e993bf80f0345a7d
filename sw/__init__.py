"""Compiler and runtime."""
