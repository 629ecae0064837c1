"""Request ids: every HTTP answer carries one (``Request-Id``), and the logs name it.

A client (or the proxy in front) that sends a sound ``X-Request-Id`` gets its own id back, so
one id follows a request through every hop; otherwise the server draws one: ``req_``, eight
hex digits drawn once per process, and a counter. Ids are unique per process without a
lookup, and across processes with near certainty.

Examples:
    ids = RequestIds()
    ids.draw()                                  # b"req_3f09a1c4" + b"1"
    ids.of([(b"x-request-id", b"lb-7781")])     # b"lb-7781"
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

#: Where the request's id travels in the ASGI scope.
REQUEST_ID_KEY = "sluice.request_id"
#: The response header.
RESPONSE_HEADER = b"request-id"
#: The request header a client or proxy names its own id with.
CLIENT_HEADER = b"x-request-id"
#: What a client's id may be: 1 to 128 characters a log line can hold as they are.
_SOUND = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class RequestIds:
    """Draws request ids for one process."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = b"req_" + os.urandom(4).hex().encode()
        self._counter = itertools.count(1)

    def draw(self) -> bytes:
        return b"%s%x" % (self._prefix, next(self._counter))

    def chosen(self, client_id: bytes) -> bytes:
        """`client_id` (what the client sent as ``X-Request-Id``, b"" for nothing) when it is
        sound, else a fresh id."""
        if client_id and _SOUND.fullmatch(client_id):
            return client_id
        return self.draw()

    def of(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The client's sound ``X-Request-Id``, else a fresh id."""
        for name, value in headers:
            if name == CLIENT_HEADER:
                return self.chosen(value)
        return self.draw()

    def in_scope(self, scope: MutableMapping[str, Any]) -> bytes:
        """The id the server put in an ASGI scope; one of its own when it put none (the app
        served by another ASGI server), kept in the scope for the request's logs."""
        request_id: bytes | None = scope.get(REQUEST_ID_KEY)
        if request_id is None:
            request_id = scope[REQUEST_ID_KEY] = self.of(scope.get("headers", ()))
        return request_id
