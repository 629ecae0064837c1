"""One gateway process: its wiring, the parts each role runs, listening sockets inherited from a
supervisor, and the supervisor itself.
"""
