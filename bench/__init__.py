"""Benchmarks (`make bench`) and the fake IAM endpoint they run against."""
