"""One client's WebSocket connection: `websockets`' sans-IO protocol on an asyncio Protocol.

The handshake's request names the token (``GET /v1/push/ws?token=…``: a browser's WebSocket
cannot set headers), and after a reconnect the last message id the client saw
(``&last_id=…``, or a ``Last-Event-ID`` header): it is first sent what was pushed to its
subscriber since, from the journal (a ``{"type": "missed"}`` frame first when some of it is
older than push.replay_window_seconds), then what arrived meanwhile, each once. A token that
does not verify, or a subscriber over its connection limit, gets the handshake and then a
close frame whose code and reason say why, because a browser shows a script the close code
and never the status of a refused handshake.

Frames, JSON text both ways:

* to the client ``{"type": "message", "id": "<message id>", "body": …, "from": …,
  "metadata": {…}}``;
* from the client ``{"type": "ack", "ids": ["<message id>", …]}``: those pushes are
  delivered.

Close codes: 4000 a `last_id` that is no message id, 4001 bad token, 4002 expired token,
4029 too many connections, 1003 a frame that is not an ack (binary, malformed JSON), 1008
over push.max_client_frames_per_second, 1009 a frame over push.max_frame_bytes, 1013 a slow
consumer (its socket's buffer over push.max_buffer_bytes), 1011 a replay the journal could
not read, 1001 the gateway stopping or a client silent for twice push.ping_seconds.

Chosen by measurement (docs/benchmarks.md, "WebSocket cores for live push"): 11-13 µs a
message and 5.7 KB a connection, against wsproto's 13.5-15.7 µs and 6.4 KB.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from sluice.ingress.push.tokens import BadToken, ExpiredToken, PushTokens
from sluice.model import Message, format_id, parse_id
from sluice.transports.push.hub import PushHub

log = logging.getLogger("sluice.push")

WS_PATH = "/v1/push/ws"
_STATIC = resources.files("sluice.ingress.push") / "static"
#: What the listener serves besides WebSockets: the JavaScript client and its example page.
STATIC = {
    "/v1/push/client.js": (
        "text/javascript; charset=utf-8",
        (_STATIC / "sluice-push.js").read_bytes(),
    ),
    "/v1/push/example": ("text/html; charset=utf-8", (_STATIC / "example.html").read_bytes()),
}
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
CLOSE_BAD_REQUEST = 4000
CLOSE_BAD_TOKEN = 4001
CLOSE_EXPIRED_TOKEN = 4002
CLOSE_TOO_MANY = 4029
#: Pushes a connection remembers until acknowledged (to know each ack's channel); past it the
#: oldest is forgotten and its ack ignored (it stays `sent`).
MAX_UNACKED = 4096


class Ack(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    ids: list[str]


class _Pushed(msgspec.Struct, omit_defaults=True, tag_field="type", tag="message"):
    id: str
    body: str
    sender: str | None = msgspec.field(default=None, name="from")
    metadata: dict[str, str] | None = None


_MISSED = b'{"type":"missed"}'
_ack_decoder = msgspec.json.Decoder(Ack)
_encoder = msgspec.json.Encoder()


class PushConnection(asyncio.Protocol):
    """One client (see the module)."""

    def __init__(
        self,
        hub: PushHub,
        tokens: PushTokens,
        clock: Callable[[], float],
        forget: Callable[[PushConnection], None],
    ) -> None:
        config = hub.config
        self._hub = hub
        self._tokens = tokens
        self._clock = clock
        self._forget = forget
        self._ws = ServerProtocol(max_size=config.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._attached = False
        self._closing = False
        self._max_buffer = config.max_buffer_bytes
        self._max_frames = config.max_client_frames_per_second
        self._window = 0.0
        self._frames = 0
        self.last_seen = clock()
        self.opened = False
        self.pinged = False
        self.started = clock()
        self._head_bytes = 0
        self.tenant = ""
        self.subscriber = ""
        self.topics: tuple[str, ...] = ()
        self._unacked: dict[str, str] = {}
        #: Live pushes held while a replay is read (None: not replaying).
        self._held: list[tuple[Message, str]] | None = None

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._clock()
        self.pinged = False
        ws = self._ws
        if not self.opened:
            self._head_bytes += len(data)
            if self._head_bytes > self._hub.config.max_request_bytes:
                self._refuse_head()
                return
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._detach()
        self._forget(self)

    # ------------------------------------------------------------------ the hub's side

    def push(self, message: Message, event_id: str) -> bool:
        transport = self._transport
        if self._closing or not self.opened or transport is None:
            return False
        if transport.get_write_buffer_size() > self._max_buffer:
            self._cut_off(f"more than push.max_buffer_bytes = {self._max_buffer} waiting")
            return False
        if self._held is not None:  # replaying: live pushes follow what was missed
            if len(self._held) >= MAX_UNACKED:
                self._cut_off("too much arrived during replay")
                return False
            self._held.append((message, event_id))
            return True
        self._write(message, event_id)
        self._flush()
        return True

    def _cut_off(self, why: str) -> None:
        self._hub.slow_consumers += 1
        self.close_for(CLOSE_TRY_LATER, f"slow consumer: {why}")

    def replayed(self, messages: list[Message], missed: bool) -> None:
        held, self._held = self._held or [], None
        if self._closing:
            return
        if missed:
            self._ws.send_text(_MISSED)
        live = {event_id for _, event_id in held}
        for message in messages:
            event_id = format_id(message.id)
            if event_id not in live:
                self._write(message, event_id)
        for message, event_id in held:
            self._write(message, event_id)
        self._flush()

    def _write(self, message: Message, event_id: str) -> None:
        unacked = self._unacked
        if len(unacked) >= MAX_UNACKED:
            del unacked[next(iter(unacked))]
        unacked[event_id] = message.channel
        pushed = _Pushed(event_id, message.body, sender=message.sender, metadata=message.metadata)
        self._ws.send_text(_encoder.encode(pushed))

    def close_for(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._detach()
        try:
            self._ws.send_close(code, reason[:120])
        except InvalidState:  # the handshake never finished: nothing to say it in
            if self._transport is not None:
                self._transport.close()
            return
        self._flush()

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self._hub.detach(self)

    @property
    def closing(self) -> bool:
        return self._closing

    def abort(self) -> None:
        """Drop the connection at once (a handshake or closing handshake past its time)."""
        if self._transport is not None:
            self._transport.abort()

    def ping(self) -> None:
        if self.opened and not self._closing:
            self.pinged = True
            self._ws.send_ping(b"")
            self._flush()

    # ------------------------------------------------------------------ protocol

    def _refuse_head(self) -> None:
        self._hub.refused["request_too_large"] += 1
        self._closing = True
        if self._ws.state is State.CONNECTING:
            limit = self._hub.config.max_request_bytes
            self._ws.send_response(
                self._ws.reject(431, f"request head over push.max_request_bytes = {limit}\n")
            )
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        url = urlsplit(request.path)
        page = STATIC.get(url.path)
        if page is not None:
            content_type, body = page
            headers = Headers(
                [
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "max-age=300"),
                    ("Connection", "close"),
                ]
            )
            ws.send_response(Response(200, "OK", headers, body))
            return
        if url.path != WS_PATH:
            self._hub.refused["not_found"] += 1
            ws.send_response(ws.reject(404, f"no push endpoint at {url.path}; use {WS_PATH}\n"))
            return
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            self._hub.refused["bad_handshake"] += 1
            return
        self.opened = True
        query = parse_qs(url.query)
        token = (query.get("token") or [""])[0]
        try:
            grant = self._tokens.verify(token)
        except ExpiredToken as error:
            self._hub.refused["expired_token"] += 1
            self.close_for(CLOSE_EXPIRED_TOKEN, str(error))
            return
        except BadToken as error:
            self._hub.refused["bad_token"] += 1
            self.close_for(CLOSE_BAD_TOKEN, str(error))
            return
        why = self._hub.admit(grant.tenant, grant.subscriber)
        if why is not None:
            self._hub.refused["too_many_connections"] += 1
            self.close_for(CLOSE_TOO_MANY, why)
            return
        last = (query.get("last_id") or [request.headers.get("Last-Event-ID", "")])[0]
        after = None
        if last:
            try:
                after = parse_id(last)
            except ValueError as error:
                self._hub.refused["bad_last_id"] += 1
                self.close_for(CLOSE_BAD_REQUEST, f"last_id: {error}")
                return
        self.tenant, self.subscriber, self.topics = grant.tenant, grant.subscriber, grant.topics
        if after is not None:
            self._held = []
        self._hub.attach(self)
        self._attached = True
        if after is not None:
            self._hub.replay(self, after)

    def _frame(self, frame: Frame) -> None:
        if self._closing:
            return
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._frames = now, 0
        self._frames += 1
        if self._frames > self._max_frames:
            self._hub.refused["frame_rate"] += 1
            self.close_for(
                CLOSE_POLICY,
                f"more than push.max_client_frames_per_second = {self._max_frames}",
            )
            return
        if frame.opcode is not Opcode.TEXT:
            if frame.opcode is Opcode.BINARY:
                self._hub.refused["malformed_frame"] += 1
                self.close_for(CLOSE_UNSUPPORTED, "binary frames are not read; send an ack")
            return  # ping, pong, close: the protocol answers them
        if not self._attached:
            return
        try:
            ack = _ack_decoder.decode(frame.data)
        except msgspec.DecodeError as error:
            self._hub.refused["malformed_frame"] += 1
            self.close_for(CLOSE_UNSUPPORTED, f"not an ack: {error}")
            return
        if ack.type != "ack":
            self._hub.refused["malformed_frame"] += 1
            self.close_for(CLOSE_UNSUPPORTED, f"unknown frame type {ack.type!r}; send an ack")
            return
        by_channel: dict[str, list[str]] = {}
        unacked = self._unacked
        for event_id in ack.ids:
            channel = unacked.pop(event_id, None)
            if channel is not None:
                by_channel.setdefault(channel, []).append(event_id)
        for channel, ids in by_channel.items():
            self._hub.acknowledged(channel, ids)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # the closing handshake is done (or the handshake refused): end the stream
                transport.close()
                return
