"""The live push endpoints in the OpenAPI document, present when `[push]` is configured.

The token request's schema is generated from `TokenRequest` itself (msgspec), so it cannot
drift from what the endpoint decodes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.config import PushConfig
from sluice.ingress.push.requests import PresenceView, TokenRequest, TokenView

_TEMPLATE = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _TEMPLATE.format(name=name)}


def push_schemas(push: PushConfig | None) -> dict[str, Any]:
    if push is None:
        return {}
    _, generated = msgspec.json.schema_components(
        [TokenRequest, TokenView, PresenceView], ref_template=_TEMPLATE
    )
    generated["TokenRequest"]["description"] = (
        "A token for one of the tenant's subscribers (and the topics whose presence it "
        f"counts in), living ttl_seconds (default push.token_ttl_seconds = "
        f"{push.token_ttl_seconds:g}, at most push.max_token_ttl_seconds = "
        f"{push.max_token_ttl_seconds:g})."
    )
    generated["TokenView"]["description"] = (
        "Connect a WebSocket to `url` on the push listener (push.listen); after a reconnect "
        "add `&last_id=<the last message id seen>` to be sent what was missed."
    )
    return generated


def push_paths(push: PushConfig | None, common: dict[str, Any]) -> dict[str, Any]:
    if push is None:
        return {}
    bad = {
        "description": "The body or query is not what the endpoint reads. Error codes: "
        "malformed_json, invalid_token_request, bad_request.",
        "content": {"application/json": {"schema": _ref("ErrorBody")}},
    }
    return {
        "/v1/push/tokens": {
            "post": {
                "summary": "Mint a push token for a subscriber",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TokenRequest")}},
                },
                "responses": {
                    "201": {
                        "description": "The token, signed for the API key's tenant.",
                        "content": {"application/json": {"schema": _ref("TokenView")}},
                    },
                    "400": bad,
                    "422": bad,
                    **common,
                },
            }
        },
        "/v1/push/presence": {
            "get": {
                "summary": "Live push connections of a subscriber or a topic, now",
                "parameters": [
                    {"name": "subscriber", "in": "query", "schema": {"type": "string"}},
                    {"name": "topic", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "From counters kept as connections come and go.",
                        "content": {"application/json": {"schema": _ref("PresenceView")}},
                    },
                    "400": bad,
                    **common,
                },
            }
        },
    }
