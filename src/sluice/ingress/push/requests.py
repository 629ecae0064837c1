"""The bodies of the push endpoints of the HTTP API (`ingress/http/push_api.py`), apart so
that the OpenAPI document generates their schemas without importing the app."""

from __future__ import annotations

from typing import Annotated

import msgspec

from sluice.audience.subscriber import ID_PATTERN

#: Topics one token may name.
MAX_TOKEN_TOPICS = 64


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    subscriber: Annotated[str, msgspec.Meta(pattern="^" + ID_PATTERN.pattern + "$")]
    topics: Annotated[
        list[Annotated[str, msgspec.Meta(pattern="^" + ID_PATTERN.pattern + "$")]],
        msgspec.Meta(max_length=MAX_TOKEN_TOPICS),
    ] = []
    ttl_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None


class TokenView(msgspec.Struct):
    token: str
    subscriber: str
    topics: list[str]
    expires_at: str
    url: str


class PresenceView(msgspec.Struct, omit_defaults=True):
    connections: int
    subscriber: str | None = None
    topic: str | None = None
