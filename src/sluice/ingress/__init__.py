"""Ingress: how producers hand messages to Sluice (the HTTP API, the SMTP front door) and the seam
they share with the pipeline (`contract`).
"""
