"""Ingress: how producers hand messages to Sluice (HTTP API; SMTP later)."""
