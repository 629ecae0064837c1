"""The live push listener: WebSocket clients holding tokens, fed by the push channel's hub
(`sluice.transports.push`)."""
