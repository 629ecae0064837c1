"""The SMTP front door: connection screening (`door`) and the mail handler behind it (`mail`)."""
