"""Sluice: a high-load message delivery gateway."""

__version__ = "0.1.0"
