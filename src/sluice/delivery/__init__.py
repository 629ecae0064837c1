"""The delivery side: a channel runner per channel (claims, limits, outcomes), the engine that runs
them for a process, status callbacks. The runner's pure parts: claim planning (`claim_plan`),
judging answers (`outcomes`), send latencies (`latency`).
"""
