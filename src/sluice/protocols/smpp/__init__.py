"""SMPP v3.4: PDUs, session state and SMS text handling, without I/O."""
