"""Reliability tests: floods, collector faults, resource limits (real agent process)."""
