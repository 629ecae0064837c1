"""Durable state of every message: one contract, a module per backend."""
