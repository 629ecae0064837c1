"""Wire protocols spoken to delivery peers, written without I/O."""
