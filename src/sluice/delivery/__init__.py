"""The delivery side: a channel runner per channel (claims, limits, outcomes), the engine that runs
them for a process, status callbacks.
"""
