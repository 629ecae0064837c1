"""Flow control without I/O: stages, token buckets and AIMD rates, retry schedules, circuit
breakers, send slots, the cap finder. Every clock is injectable.
"""
