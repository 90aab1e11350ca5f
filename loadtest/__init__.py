"""Load generation and benchmarks (scripts, not tests)."""
