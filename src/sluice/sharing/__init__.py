"""What gateway processes share through Redis: channel rates, breaker news, the idempotency cache,
and the builder that wires them from `[redis]`.
"""
