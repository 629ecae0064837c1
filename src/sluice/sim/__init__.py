"""Simulated peers for the demo, integration tests and benchmarks (`sluice sim ...`)."""
