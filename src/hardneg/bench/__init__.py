"""Benchmarks that print measured ratios against the anchors run in the same invocation."""
