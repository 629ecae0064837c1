"""Incremental SMPP framer: bytes in any chunking, whole PDUs out, bounded memory.

Every PDU starts with its own length (command_length, 4 octets), so framing is: read the
16-octet header, check the length, wait for that many octets. The length is checked as soon as
the header is in, before any of the body is buffered, so a peer announcing a 2 GB PDU costs us
16 octets, and the buffer never holds more than ``max_command_length`` octets.

A whole chunk of complete PDUs (the common case on a busy link) is sliced straight out of the
caller's bytes; only the incomplete tail is copied into the buffer, and a PDU is completed from
the next chunk by appending only the octets it still lacks, so no byte is copied more than twice
whatever the chunking.

Examples:
    >>> from sluice.protocols.smpp.pdu import EnquireLink, encode
    >>> parser = PduParser()
    >>> data = encode(EnquireLink(sequence_number=1)) + encode(EnquireLink(sequence_number=2))
    >>> parser.feed(data[:20])
    [EnquireLink(sequence_number=1)]
    >>> parser.feed(data[20:])
    [EnquireLink(sequence_number=2)]
"""

from __future__ import annotations

import struct

from sluice.protocols.smpp.constants import CommandStatus
from sluice.protocols.smpp.errors import SmppProtocolError
from sluice.protocols.smpp.pdu import HEADER_LENGTH, Pdu, decode_frame

# The largest PDU accepted by default. submit_sm with a full 254-octet short_message and its
# mandatory fields is at most ~400 octets, and a handful of TLVs keeps it well under 1 KiB; the
# one legitimately big PDU is a submit_sm/data_sm/deliver_sm whose message_payload TLV carries
# up to 65,535 octets (its length field is 16 bits). 64 KiB for that value plus 4 KiB for the
# header, the mandatory fields and other TLVs accepts every PDU the specification allows in
# practice, while a corrupt or hostile length is refused before anything is buffered.
DEFAULT_MAX_COMMAND_LENGTH = 64 * 1024 + 4 * 1024

_unpack_header = struct.Struct(">IIII").unpack_from


class PduParser:
    """Split a byte stream into PDUs.

    ``feed(data)`` returns the PDUs completed by ``data``. ``frames(data)`` does the framing
    alone and returns the raw PDUs, for callers that decode (and answer errors) one by one, as
    ``SmppSession`` does.

    Warning:
        A bad command_length is fatal: the stream cannot be resynchronised, the parser keeps
        refusing, and the connection must be closed after a generic_nack. A PDU whose body does
        not decode is not fatal: framing is intact, the PDU is answered and the stream goes on.
    """

    __slots__ = ("_buf", "_error", "_max", "_need", "_pending")

    def __init__(self, max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH) -> None:
        if max_command_length < HEADER_LENGTH:
            raise ValueError(
                f"max_command_length must be at least {HEADER_LENGTH}, got {max_command_length}"
            )
        self._max = max_command_length
        self._buf = bytearray()
        self._need = 0  # length of the PDU in the buffer, once its header is in
        self._error: SmppProtocolError | None = None
        self._pending: list[bytes] = []

    @property
    def max_command_length(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Octets held for an incomplete PDU; never more than ``max_command_length``."""
        return len(self._buf)

    def _check(self, data: bytes | bytearray, pos: int) -> int:
        length: int  # unpack_from is typed tuple[Any, ...]; ">IIII" gives four ints
        length, command_id, _status, seq = _unpack_header(data, pos)
        if HEADER_LENGTH <= length <= self._max:
            return length
        if length < HEADER_LENGTH:
            reason = f"command_length {length} is shorter than the {HEADER_LENGTH}-octet header"
        else:
            reason = f"command_length {length} exceeds the maximum of {self._max} octets"
        self._error = SmppProtocolError(
            CommandStatus.ESME_RINVCMDLEN, reason, seq, command_id, fatal=True
        )
        self._buf.clear()
        return -1

    def frames(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[bytes], SmppProtocolError | None]:
        """The whole PDUs completed by ``data``, and the framing error that stopped the stream.

        The PDUs before a framing error are returned with it; after one, every call returns
        ``([], error)``.
        """
        if self._error is not None:
            return [], self._error
        if type(data) is not bytes:
            data = bytes(data)
        out: list[bytes] = []
        pos = 0
        n = len(data)
        buf = self._buf
        if buf:
            # Complete the PDU in progress with only the octets it lacks.
            have = len(buf)
            if have < HEADER_LENGTH:
                pos = HEADER_LENGTH - have
                buf += data[:pos]
                if len(buf) < HEADER_LENGTH:
                    return out, None
                self._need = self._check(buf, 0)
                if self._need < 0:
                    return out, self._error
            take = self._need - len(buf)
            if take > 0:
                buf += data[pos : pos + take]
                pos += take
                if len(buf) < self._need:
                    return out, None
            out.append(bytes(buf))
            buf.clear()
        while n - pos >= HEADER_LENGTH:
            length = self._check(data, pos)
            if length < 0:
                return out, self._error
            end = pos + length
            if end > n:
                self._need = length
                break
            out.append(data[pos:end])
            pos = end
        if pos < n:
            buf += data[pos:]
        return out, None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Pdu]:
        """The PDUs completed by ``data``, in order.

        Raises:
            SmppProtocolError: a bad command_length (``fatal=True``), or a PDU whose body does
                not decode (``fatal=False``; its ``sequence_number`` and ``command_id`` say what
                to answer). Nothing is lost: the PDUs decoded before the error in this call are
                in ``error.decoded``, and the PDUs after it come out of the next ``feed`` call
                (``feed(b"")`` drains them).
        """
        frames, error = self.frames(data)
        if self._pending:
            frames = self._pending + frames
            self._pending = []
        pdus: list[Pdu] = []
        for index, frame in enumerate(frames):
            _length, command_id, status, seq = _unpack_header(frame)
            try:
                pdus.append(decode_frame(frame, command_id, status, seq))
            except SmppProtocolError as exc:
                self._pending = frames[index + 1 :]
                exc.decoded = tuple(pdus)
                raise
        if error is not None:
            raise SmppProtocolError(
                error.status,
                error.message,
                error.sequence_number,
                error.command_id,
                fatal=True,
                decoded=tuple(pdus),
            )
        return pdus
