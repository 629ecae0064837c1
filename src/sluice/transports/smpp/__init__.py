"""SMS over SMPP: the channel (several binds, receipts, MO) and one bind's connection life cycle."""
