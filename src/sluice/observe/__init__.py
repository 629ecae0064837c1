"""Observation: metrics rendered from the snapshots that components expose through `stats()`."""
