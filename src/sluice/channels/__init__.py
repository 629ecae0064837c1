"""Pure delivery-channel primitives: rate limits, retry schedules and circuit breakers."""
