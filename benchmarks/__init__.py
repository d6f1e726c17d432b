"""Runnable benchmarks: print a table, write JSON (not part of the test suite)."""
