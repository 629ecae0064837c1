"""The live push endpoints of the HTTP API: tokens for clients, and presence.

``POST /v1/push/tokens`` mints a token for one of the tenant's subscribers (the application
calls it, with its API key, and hands the token to its browser or app, which connects to
the push listener with it): ``{"subscriber": "u1", "topics": ["news"], "ttl_seconds":
600}`` → 201 ``{"token": …, "expires_at": …, "url": "/v1/push/ws?token=…"}``. The token
names the tenant of the key that minted it, so a client can never read another tenant's
subscriber.

``GET /v1/push/presence?subscriber=u1`` (or ``?topic=news``): live connections now, from
counters (this process's on the embedded journal).

Examples:
    $ curl -X POST $URL/v1/push/tokens -H "Authorization: Bearer $KEY" \\
        -H 'content-type: application/json' -d '{"subscriber": "u1"}'
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import msgspec

from sluice.config import Config, PushConfig
from sluice.ingress.http.app import Receive, Scope, _Headers, _headers, _query, _Response
from sluice.ingress.http.audience_api import _decode_json
from sluice.ingress.http.schema import ApiError
from sluice.ingress.push.connection import WS_PATH
from sluice.ingress.push.requests import PresenceView, TokenRequest, TokenView
from sluice.ingress.push.tokens import PushTokens
from sluice.model import format_time

Handler = Callable[..., Awaitable[_Response]]
#: Live connections of (tenant, subscriber, topic): one of the two names is None.
Presence = Callable[[str, str | None, str | None], int]
_token_decoder = msgspec.json.Decoder(TokenRequest)
_encoder = msgspec.json.Encoder()


class PushApi:
    def __init__(
        self,
        config: Config,
        push: PushConfig,
        presence: Presence,
        tenant: Callable[[_Headers], str],
        read_body: Callable[[Receive, int], Awaitable[bytes]],
    ) -> None:
        self._config = push
        self._tokens = PushTokens(push.token_secret.encode())
        self._presence_of = presence
        self._tenant = tenant
        self._read_body = read_body
        self._max_body = config.limits.max_request_bytes

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            "/v1/push/tokens": {"POST": self._mint},
            "/v1/push/presence": {"GET": self._presence},
        }

    async def _mint(self, scope: Scope, receive: Receive) -> _Response:
        tenant = self._tenant(_headers(scope))
        raw = await self._read_body(receive, self._max_body)
        request = _decode_json(_token_decoder, raw, "invalid_token_request")
        ttl = request.ttl_seconds or self._config.token_ttl_seconds
        if ttl > self._config.max_token_ttl_seconds:
            raise ApiError(
                422,
                "invalid_token_request",
                f"ttl_seconds {ttl:g} is longer than push.max_token_ttl_seconds "
                f"({self._config.max_token_ttl_seconds:g})",
                "ttl_seconds",
            )
        topics = tuple(dict.fromkeys(request.topics))
        grant = self._tokens.grant(tenant, request.subscriber, topics, int(ttl * 1000))
        token = self._tokens.sign(grant)
        view = TokenView(
            token,
            request.subscriber,
            list(topics),
            format_time(grant.expires_at),
            f"{WS_PATH}?token={quote(token)}",
        )
        return _Response(201, _encoder.encode(view))

    async def _presence(self, scope: Scope, receive: Receive) -> _Response:
        tenant = self._tenant(_headers(scope))
        query = _query(scope["query_string"])
        subscribers, topics = query.get("subscriber", []), query.get("topic", [])
        if len(subscribers) + len(topics) != 1:
            raise ApiError(400, "bad_request", "name one `subscriber` or one `topic`")
        if subscribers:
            count = self._presence_of(tenant, subscribers[0], None)
            view = PresenceView(count, subscriber=subscribers[0])
        else:
            count = self._presence_of(tenant, None, topics[0])
            view = PresenceView(count, topic=topics[0])
        return _Response(200, _encoder.encode(view))
