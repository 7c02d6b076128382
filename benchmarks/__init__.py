"""Benchmark scripts (run as files, see each one's docstring) and the helpers they share."""
