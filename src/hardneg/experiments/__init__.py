"""Documented experiments, each runnable as a module or a CLI command."""
