"""How many errors an SMTP session may make before it is hung up on.

A client that keeps getting errors is a bot, a dictionary attack or a broken program; talking
on costs a reply per line for ever (150 garbage lines were each answered 500, 100 failed AUTHs
were allowed). As Postfix's smtpd does (smtpd_hard_error_limit, 20), every error reply counts,
and once the count reaches the limit the server says 421 and closes; a lower limit holds for
failed AUTH attempts, the replies a password guesser lives on. Delivering mail wipes the error
count (a client that sends well is not cut off by a few refused recipients over a long
session), never the AUTH failures.

Examples:
    >>> errors = ErrorCount(max_errors=2, max_auth_failures=1)
    >>> errors.count("250 OK"), errors.count("500 Error: bad syntax")
    (None, None)
    >>> errors.count("452 4.5.3 Too many recipients (at most 100)")  # not an error (below)
    >>> errors.count("550 5.1.1 <x@sms.example>: not a phone number")
    'too many errors'
    >>> ErrorCount(max_errors=20, max_auth_failures=1).count(
    ...     "535 5.7.8 Authentication credentials invalid")
    'too many failed AUTH attempts'
"""

from __future__ import annotations

#: "Too many recipients" does not count: a client with a long list is told to send the rest
#: in another transaction, and doing so is no fault (Postfix's smtpd_recipient_overshoot_limit
#: treats it apart the same way).
_NOT_ERRORS = ("452 4.5.3",)
#: A 421 already ends the session; it is not counted again.
_CLOSING = "421"
_AUTH_FAILED = "535"


class ErrorCount:
    """The error replies one session has had; `count` each reply as it is sent."""

    __slots__ = ("_max_auth_failures", "_max_errors", "auth_failures", "errors")

    def __init__(self, *, max_errors: int, max_auth_failures: int) -> None:
        self.errors = 0
        self.auth_failures = 0
        self._max_errors = max_errors
        self._max_auth_failures = max_auth_failures

    def count(self, reply: str | bytes) -> str | None:
        """Count `reply`; returns why the session must end now, or None."""
        text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else reply
        if text[:1] not in ("4", "5") or text.startswith(_CLOSING) or text.startswith(_NOT_ERRORS):
            return None
        self.errors += 1
        if text.startswith(_AUTH_FAILED):
            self.auth_failures += 1
            if self.auth_failures >= self._max_auth_failures:
                return "too many failed AUTH attempts"
        if self.errors >= self._max_errors:
            return "too many errors"
        return None

    def delivered(self) -> None:
        """Mail was accepted: the errors so far are forgiven (failed AUTHs are not)."""
        self.errors = 0
