"""The journal's calls on a local socket, without the socket: frames, calls, replies, errors.

Every frame is a 4-byte big-endian length and a msgpack body:

    call     [id, method, [arg, …]]          id ≥ 1, chosen by the caller
    reply    [id, 0, value]                   the method's return value
    failure  [id, 1, [kind, text, extra]]     an exception the method raised (`FAILURES`)
    state    [0, 2, OwnerState]               pushed by the owner when its state changes

Arguments and values are encoded and decoded with the types the `Journal` contract declares
for each method (`CallTable`), so a `Message` crosses as the compact array it is in memory and
arrives as a `Message`, a `CancelResult` as its value, and a value of the wrong type is a
`WireError` at the receiver, never a wrong object handed on.

Examples:
    >>> table = CallTable()
    >>> frame = table.encode_call(7, "get", ("acme", 42))
    >>> reader = FrameReader(1 << 20)
    >>> [table.decode_call(body)[:2] for body in reader.feed(frame)]
    [(7, 'get')]
"""

from __future__ import annotations

import inspect
import struct
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from sluice.journal.base import (
    DeadlinePassed,
    IdempotencyConflict,
    Journal,
    JournalBusy,
    JournalDamaged,
    JournalError,
    JournalStats,
)
from sluice.journal.broadcasts import UnknownTopics

_LENGTH = struct.Struct(">I")
#: Kinds of frame (the second field).
REPLY, FAILURE, STATE = 0, 1, 2
#: The id of a frame no call asked for (a state push).
PUSH_ID = 0
#: Methods of the contract that are not calls: the life cycle belongs to the journal's owner.
NOT_CALLS = frozenset({"open", "close"})

#: Exceptions that cross the socket as themselves, by name; any other is a JournalError.
FAILURES: dict[str, Callable[[str, Any], BaseException]] = {
    "JournalError": lambda text, _: JournalError(text),
    "JournalBusy": lambda text, _: JournalBusy(text),
    "JournalDamaged": lambda text, _: JournalDamaged(text),
    "IdempotencyConflict": lambda text, _: IdempotencyConflict(text),
    "DeadlinePassed": lambda text, _: DeadlinePassed(text),
    "UnknownTopics": lambda _, names: UnknownTopics(list(names)),
}


class WireError(Exception):
    """A frame that does not decode as what it claims to be (a bug or a damaged stream: the
    connection is closed)."""


class OwnerState(msgspec.Struct, frozen=True):
    """What the journal's owner tells its callers whenever it changes: the sync half of the
    contract (`pending`, `fault`, `stats`) that a call per read would make slow."""

    pending: dict[str, int]
    fault: str | None
    stats: JournalStats
    #: What the owner's process layer adds (its channel figures and metrics), when renewed.
    annex: bytes | None = None


class Signature(NamedTuple):
    """One method: its parameters in order (and which are keyword-only), and the decoders of
    its arguments and of its value."""

    params: tuple[str, ...]
    keyword_only: frozenset[str]
    args: msgspec.msgpack.Decoder[Any]
    value: msgspec.msgpack.Decoder[Any]


def _signatures() -> dict[str, Signature]:
    table: dict[str, Signature] = {}
    for name, function in inspect.getmembers(Journal, inspect.iscoroutinefunction):
        if name.startswith("_") or name in NOT_CALLS:
            continue
        hints = typing.get_type_hints(function)
        params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
        types = tuple(hints[p.name] for p in params)
        table[name] = Signature(
            tuple(p.name for p in params),
            frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY),
            msgspec.msgpack.Decoder(tuple[types] if types else tuple[()]),  # type: ignore[valid-type]
            msgspec.msgpack.Decoder(hints["return"]),
        )
    return table


class CallTable:
    """Encodes and decodes the frames of every call the `Journal` contract has."""

    def __init__(self) -> None:
        self.signatures = _signatures()
        self._encoder = msgspec.msgpack.Encoder()
        self._call_head = msgspec.msgpack.Decoder(tuple[int, str, msgspec.Raw])
        self._reply_head = msgspec.msgpack.Decoder(tuple[int, int, msgspec.Raw])
        self._failure = msgspec.msgpack.Decoder(tuple[str, str, Any])
        self._state = msgspec.msgpack.Decoder(OwnerState)

    def _frame(self, body: Any) -> bytes:
        data = self._encoder.encode(body)
        return _LENGTH.pack(len(data)) + data

    # ---------------------------------------------------------------- the caller's side

    def encode_call(self, call_id: int, method: str, args: tuple[Any, ...]) -> bytes:
        if method not in self.signatures:
            raise WireError(f"no journal call {method!r}")
        return self._frame((call_id, method, args))

    def decode_reply(self, body: bytes) -> tuple[int, int, msgspec.Raw]:
        """(id, kind, the rest undecoded): the caller knows which method it awaits."""
        try:
            return self._reply_head.decode(body)
        except msgspec.DecodeError as exc:
            raise WireError(f"not a journal reply: {exc}") from None

    def decode_value(self, method: str, raw: msgspec.Raw) -> Any:
        try:
            return self.signatures[method].value.decode(raw)
        except msgspec.DecodeError as exc:
            raise WireError(f"the reply to {method} does not decode: {exc}") from None

    def decode_failure(self, raw: msgspec.Raw) -> BaseException:
        try:
            kind, text, extra = self._failure.decode(raw)
        except msgspec.DecodeError as exc:
            raise WireError(f"not a journal failure: {exc}") from None
        make = FAILURES.get(kind)
        if make is None:
            return JournalError(f"the journal's process failed: {kind}: {text}")
        return make(text, extra)

    def decode_state(self, raw: msgspec.Raw) -> OwnerState:
        try:
            return self._state.decode(raw)
        except msgspec.DecodeError as exc:
            raise WireError(f"not the journal's state: {exc}") from None

    # ---------------------------------------------------------------- the owner's side

    def decode_call(self, body: bytes) -> tuple[int, str, tuple[Any, ...], dict[str, Any]]:
        """(id, method, positional arguments, keyword arguments)."""
        try:
            call_id, method, raw = self._call_head.decode(body)
        except msgspec.DecodeError as exc:
            raise WireError(f"not a journal call: {exc}") from None
        signature = self.signatures.get(method)
        if signature is None:
            raise WireError(f"no journal call {method!r}")
        try:
            values = signature.args.decode(raw)
        except msgspec.DecodeError as exc:
            raise WireError(f"the arguments of {method} do not decode: {exc}") from None
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, value in zip(signature.params, values, strict=True):
            if name in signature.keyword_only:
                kwargs[name] = value
            else:
                args.append(value)
        return call_id, method, tuple(args), kwargs

    def encode_reply(self, call_id: int, value: Any) -> bytes:
        return self._frame((call_id, REPLY, value))

    def encode_failure(self, call_id: int, error: BaseException) -> bytes:
        kind = type(error).__name__
        if kind not in FAILURES:
            kind = "JournalError"
        extra = error.names if isinstance(error, UnknownTopics) else None
        return self._frame((call_id, FAILURE, (kind, str(error), extra)))

    def encode_state(self, state: OwnerState) -> bytes:
        return self._frame((PUSH_ID, STATE, state))


class FrameReader:
    """Splits a byte stream into frame bodies; a frame longer than `max_bytes` is a WireError
    (the stream cannot be trusted after it)."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The bodies of the frames `data` completes, in order."""
        buffer = self._buffer
        buffer += data
        bodies: list[bytes] = []
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self._max:
                raise WireError(f"a journal frame of {length} bytes, over the limit of {self._max}")
            if end - start - 4 < length:
                break
            bodies.append(bytes(buffer[start + 4 : start + 4 + length]))
            start += 4 + length
        del buffer[:start]
        return bodies
