"""The broadcast endpoints in the OpenAPI document (`openapi.py` assembles it).

The request's schema is generated from `BroadcastIn` itself (msgspec), so it cannot drift
from what the endpoint decodes; the descriptions add what types cannot say: the limits, the
order of choices, and the error codes of each status.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.audience.broadcast import SUPPRESSION_REASONS, BroadcastIn
from sluice.config import Config

_TEMPLATE = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _TEMPLATE.format(name=name)}


def _error(description: str, codes: list[str]) -> dict[str, Any]:
    return {
        "description": f"{description} Error codes: {', '.join(codes)}.",
        "content": {"application/json": {"schema": _ref("ErrorBody")}},
    }


def broadcast_schemas(config: Config) -> dict[str, Any]:
    audience = config.audience
    (request,), generated = msgspec.json.schema_components([BroadcastIn], ref_template=_TEMPLATE)
    generated["BroadcastIn"]["description"] = (
        f"At most audience.max_broadcast_topics ({audience.max_broadcast_topics}) topics, "
        "their subscribers deduplicated; channels in order of preference (the first where "
        "the subscriber has an address and has not opted out); content per channel type "
        "(sms, email, webhook, push) as Jinja2 templates (sandboxed; each at most "
        f"audience.max_template_bytes = {audience.max_template_bytes} bytes) with the "
        "variables of `data`, the subscriber's attributes, and `subscriber` (id, locale, "
        "timezone); a missing variable fails the recipient or takes `defaults`, as "
        "`missing_variable` says. `local_time` (HH:MM) sends at that time in each "
        "subscriber's zone, the first on or after send_at; quiet hours defer a message to "
        "their end unless respect_quiet_hours is false; `rate` caps the broadcast's "
        "messages per second."
    )
    count = {"type": "integer", "minimum": 0}
    states = ["queued", "sending", "sent", "delivered", "failed", "expired", "cancelled"]
    time = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    view = {
        "type": "object",
        "description": "A broadcast and its accounting, all from counters.",
        "required": ["id", "status", "phase", "counts", "remaining", "eta_seconds"],
        "properties": {
            "id": _ref("MessageId"),
            "status": {"enum": ["running", "paused", "cancelled"]},
            "phase": {
                "enum": [
                    "scheduled",
                    "expanding",
                    "sending",
                    "paused",
                    "cancelling",
                    "cancelled",
                    "completed",
                ]
            },
            "topics": {"type": "array", "items": {"type": "string"}},
            "channels": {"type": "array", "items": {"type": "string"}},
            "priority": {"type": "integer"},
            "created_at": time,
            "start_at": time,
            "started_at": time,
            "expanded_at": time,
            "audience": {**count, "description": "Members of its topics when created."},
            "examined": {**count, "description": "Members read so far."},
            "planned": {**count, "description": "Messages made."},
            "suppressed": {
                "type": "object",
                "description": "Members that got no message, by reason: "
                + ", ".join(SUPPRESSION_REASONS)
                + ".",
                "additionalProperties": count,
            },
            "counts": {
                "type": "object",
                "description": "Its messages by state, now.",
                "properties": {state: count for state in states},
            },
            "by_channel": {
                "type": "object",
                "description": "The same per channel, with `rate`: messages finished per "
                "second lately.",
                "additionalProperties": {"type": "object"},
            },
            "rate": {"type": "number", "description": "Messages finished per second lately."},
            "remaining": {**count, "description": "Messages still to finish (estimated)."},
            "eta_seconds": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "eta": time,
            "held": {**count, "description": "pause: queued messages held."},
            "released": {**count, "description": "resume: messages released."},
            "cancelled": {**count, "description": "cancel: queued messages cancelled."},
        },
    }
    page = {
        "type": "object",
        "required": ["broadcasts", "next"],
        "properties": {
            "broadcasts": {"type": "array", "items": _ref("Broadcast")},
            "next": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "Pass as `before` for the next page.",
            },
        },
    }
    assert request == _ref("BroadcastIn")
    return {**generated, "Broadcast": view, "BroadcastPage": page}


BROADCAST_RESPONSES: dict[str, Any] = {
    "BroadcastUnprocessable": _error(
        "A field is missing, mistyped or out of its limits, a topic or channel is unknown, or "
        "a template does not compile (the message gives its line); `field` names it. Nothing "
        "was stored.",
        [
            "invalid_broadcast",
            "invalid_template",
            "unknown_topic",
            "unknown_channel",
            "channel_not_allowed",
            "idempotency_key_reused",
        ],
    ),
    "BroadcastNotFound": _error("No broadcast of this tenant has this id.", ["not_found"]),
}


def broadcast_paths(common: dict[str, Any]) -> dict[str, Any]:
    """The paths; `common` are the responses every operation has (auth, timeouts, 500)."""

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }

    not_found = {"404": {"$ref": "#/components/responses/BroadcastNotFound"}}
    ident = {"name": "id", "in": "path", "required": True, "schema": _ref("MessageId")}

    def action(name: str, summary: str, key: str) -> dict[str, Any]:
        return {
            "parameters": [ident],
            "post": {
                "operationId": f"{name}Broadcast",
                "summary": summary,
                "responses": {
                    "200": answer(f"Done; `{key}` counts the messages it moved.", "Broadcast"),
                    **not_found,
                    **common,
                },
            },
        }

    return {
        "/v1/broadcasts": {
            "post": {
                "operationId": "createBroadcast",
                "summary": "Send content to everyone on some topics",
                "description": "202 once the broadcast is committed; its recipients are then "
                "expanded durably, just ahead of the channels. An Idempotency-Key makes a "
                "repeat return the first broadcast (header Idempotent-Replayed: true).",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BroadcastIn")}},
                },
                "responses": {
                    "202": answer("Committed.", "Broadcast"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "413": {"$ref": "#/components/responses/TooLarge"},
                    "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
                    "422": {"$ref": "#/components/responses/BroadcastUnprocessable"},
                    **common,
                },
            },
            "get": {
                "operationId": "listBroadcasts",
                "summary": "The tenant's broadcasts, newest first",
                "parameters": [
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "schema": _ref("MessageId"),
                    }
                ],
                "responses": {"200": answer("One page.", "BroadcastPage"), **common},
            },
        },
        "/v1/broadcasts/{id}": {
            "parameters": [ident],
            "get": {
                "operationId": "getBroadcast",
                "summary": "A broadcast's counts, rates and ETA",
                "responses": {"200": answer("The broadcast.", "Broadcast"), **not_found, **common},
            },
        },
        "/v1/broadcasts/{id}/pause": action(
            "pause", "Hold a broadcast: no more expansion, queued messages held", "held"
        ),
        "/v1/broadcasts/{id}/resume": action("resume", "Go on with a paused broadcast", "released"),
        "/v1/broadcasts/{id}/cancel": action(
            "cancel", "Stop a broadcast for good: queued messages cancelled", "cancelled"
        ),
    }
