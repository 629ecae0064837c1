"""The two ways an SMPP exchange goes wrong: the peer broke the protocol, or we did.

``SmppProtocolError`` is the peer's fault and carries the ``command_status`` the answer to the
offending PDU should use, so a session turns it into bytes without guessing. ``LocalProtocolError``
is our own bug (sending a PDU the session state forbids) and is never caused by anything the peer
sends. A field too long to encode is a ``ValueError`` naming the field, raised by ``encode``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.protocols.smpp.pdu.types import Pdu


class SmppProtocolError(Exception):
    """A PDU from the peer that cannot be accepted.

    Attributes:
        status: the ``command_status`` to answer with (``ESME_RINVCMDLEN``, ``ESME_RINVCMDID``,
            ``ESME_RINVMSGLEN``, ``ESME_RINVOPTPARSTREAM`` …).
        message: what was wrong, naming the field and the limit.
        sequence_number: the offending PDU's sequence number when its header could be read,
            so the answer can echo it; ``None`` otherwise.
        command_id: the offending PDU's command id when its header could be read.
        fatal: ``True`` when the byte stream cannot be resynchronised (a bad command_length):
            send a generic_nack and close. ``False`` when one PDU was bad but framing is intact.
        decoded: PDUs decoded from the same chunk before the error (``PduParser.feed`` only),
            so a caller that catches the error loses nothing.
    """

    def __init__(
        self,
        status: int,
        message: str,
        sequence_number: int | None = None,
        command_id: int | None = None,
        *,
        fatal: bool = False,
        decoded: tuple[Pdu, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sequence_number = sequence_number
        self.command_id = command_id
        self.fatal = fatal
        self.decoded = decoded

    def __repr__(self) -> str:
        return (
            f"SmppProtocolError(status=0x{self.status:X}, message={self.message!r}, "
            f"sequence_number={self.sequence_number!r}, command_id={self.command_id!r}, "
            f"fatal={self.fatal!r})"
        )


class LocalProtocolError(Exception):
    """We tried something the protocol forbids: a bug in the caller, not the peer's doing."""
