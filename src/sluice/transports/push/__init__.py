"""The live push channel: a process's connections (the hub) and the transport writing to them;
the listener that accepts the connections is an edge (`sluice.ingress.push`)."""
