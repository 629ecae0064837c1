"""Whether a text can go out as an SMS, counted as the SMPP channel will cut it.

Without this check, a text needing more parts than the channel's `smpp.max_segments` was
accepted (250 by mail, 202 over HTTP) and then failed at its first send attempt, where the
producer never hears of it (a 3,118-character text is 21 segments). Both edges count the
segments with the channel's own segmentation code and settings and refuse such a text while
the producer can still be told: the SMTP front door at the end of DATA, the HTTP API with 422.

The channel numbers concatenated messages from a 16-bit counter, and in UDH mode a reference
above 255 costs one octet per part (152 septets instead of 153): the count here assumes such a
reference, as the channel uses for 255 messages in 256, so that no text accepted here is
refused there.

Examples:
    >>> smpp = SmppConfig(host="smsc.example", system_id="acme", max_segments=2)
    >>> length = SmsLength("sms", smpp)
    >>> length.problem("a" * 304) is None  # two parts of 152 septets
    True
    >>> print(length.problem("a" * 305))
    305 characters need 3 segments; channels.sms.smpp.max_segments is 2
    >>> for part in length.refusal("a" * 305).split("; "):
    ...     print(part)
    552 5.3.4 SMS text too long: 305 characters need 3 segments
    channels.sms.smpp.max_segments is 2
"""

from __future__ import annotations

from sluice.config import SmppConfig
from sluice.protocols.smpp.segmentation import MAX_REFERENCE, segment_count

#: No text this long or shorter needs a second part, whatever its characters: 70 UCS-2 units
#: fit in one, and a character outside the BMP takes two.
ALWAYS_ONE_PART = 35


class SmsLength:
    """The segment limit of one SMPP channel."""

    __slots__ = ("_channel", "_smpp")

    def __init__(self, channel: str, smpp: SmppConfig) -> None:
        self._channel = channel
        self._smpp = smpp

    def problem(self, text: str) -> str | None:
        """Why `text` can never be sent on this channel (a sentence), or None."""
        if len(text) <= ALWAYS_ONE_PART:
            return None
        smpp = self._smpp
        try:
            count = segment_count(text, mode=smpp.segmentation, reference=MAX_REFERENCE)
        except ValueError as exc:
            return f"cannot be encoded: {exc}"
        if count <= smpp.max_segments:
            return None
        return (
            f"{len(text)} characters need {count} segments; "
            f"channels.{self._channel}.smpp.max_segments is {smpp.max_segments}"
        )

    def refusal(self, text: str) -> str | None:
        """The SMTP reply refusing `text` (it can never be sent on this channel), or None."""
        problem = self.problem(text)
        if problem is None:
            return None
        if problem.startswith("cannot be encoded"):
            return f"554 5.6.0 SMS text {problem}"
        return f"552 5.3.4 SMS text too long: {problem}"
