"""The SMTP front door's screening: access lists, connection limits, DNSBL scores, greylisting
and a compact memory of every client, before any SMTP work is done."""
