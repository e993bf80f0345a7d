"""Amaranth RTL of the node and tile, and the Verilator toolchain that builds it."""
