"""The `sluice` command and its demo."""
