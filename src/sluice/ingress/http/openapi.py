"""The OpenAPI 3.1 description of the HTTP API, as plain data (served at ``GET /openapi.json``).

Written by hand rather than generated so that it can say what the code enforces beyond types:
the configured limits (they are filled in from the configuration the app runs with), the
error codes of each status, and which endpoints need no API key. `tests/ingress` checks that
every route of `sluice.ingress.http.app` is described here and that every reference resolves.
"""

from __future__ import annotations

from typing import Any

from sluice.audience.subscriber import CHANNEL_TYPES
from sluice.config import Config
from sluice.ingress.http.openapi_broadcasts import (
    BROADCAST_RESPONSES,
    broadcast_paths,
    broadcast_schemas,
)
from sluice.ingress.http.openapi_push import push_paths, push_schemas
from sluice.model import ID_LENGTH, Outcome, Priority, State

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _error_response(description: str, codes: list[str], **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": f"{description} Error codes: {', '.join(codes)}.",
        "content": _json_content(_ref("ErrorBody")),
    }
    if headers:
        response["headers"] = headers
    return response


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _schemas(config: Config) -> dict[str, Any]:
    limits = config.limits
    timestamp_in_text = (
        "RFC 3339 date-time with a time zone, or integer milliseconds since the Unix epoch."
    )
    timestamp_in = {
        "description": timestamp_in_text,
        "oneOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_999},
        ],
    }
    timestamp_out = {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, UTC, milliseconds: 2025-01-01T00:00:00.000Z",
    }
    message_id = {
        "type": "string",
        "minLength": ID_LENGTH,
        "maxLength": ID_LENGTH,
        "pattern": f"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{{{ID_LENGTH}}}$",
        "description": "Time-ordered message id, Crockford base32.",
    }
    priority = {"type": "string", "enum": [p.name.lower() for p in Priority]}
    state = {"type": "string", "enum": [s.name.lower() for s in State]}
    metadata = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "maxProperties": limits.max_metadata_entries,
        "description": f"String to string; at most {limits.max_metadata_bytes} bytes as JSON. "
        "Returned with the message and in callbacks.",
    }
    return {
        "MessageId": message_id,
        "Priority": priority,
        "State": state,
        "MessageIn": {
            "type": "object",
            "description": "One message to deliver. Unknown fields are refused (422).",
            "required": ["channel", "to", "body"],
            "additionalProperties": False,
            "properties": {
                "channel": {
                    "type": "string",
                    "description": "A configured channel this API key's tenant may use "
                    "(GET /v1/channels).",
                },
                "to": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": limits.max_recipient_length,
                    "description": "Recipient: a phone number, address or subscriber id.",
                },
                "from": {
                    "anyOf": [
                        {"type": "string", "maxLength": limits.max_sender_length},
                        {"type": "null"},
                    ]
                },
                "body": {
                    "type": "string",
                    "description": f"At most {limits.max_body_bytes} bytes of UTF-8.",
                },
                "priority": {**priority, "default": "normal"},
                "not_before": {
                    **timestamp_in,
                    "description": "Do not deliver before this time. " + timestamp_in_text,
                },
                "expires_at": {
                    **timestamp_in,
                    "description": "Give up delivering at this time; must be in the future and "
                    "after not_before. " + timestamp_in_text,
                },
                "ttl_seconds": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Alternative to expires_at, counted from acceptance; giving "
                    "both is refused.",
                },
                "callback_url": {
                    "type": "string",
                    "format": "uri",
                    "maxLength": limits.max_callback_url_length,
                    "description": "http(s) URL that receives a POST on each final state.",
                },
                "metadata": metadata,
            },
        },
        "Batch": {
            "type": "object",
            "required": ["messages"],
            "additionalProperties": False,
            "properties": {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.max_batch,
                    "items": _ref("MessageIn"),
                }
            },
        },
        "SubmitResponse": {
            "type": "object",
            "required": ["ids", "replayed"],
            "properties": {
                "ids": {
                    "type": "array",
                    "items": _ref("MessageId"),
                    "description": "One id per message, in request order.",
                },
                "replayed": {
                    "type": "boolean",
                    "description": "True when the Idempotency-Key was seen before: these are "
                    "the first request's ids and nothing new was stored.",
                },
            },
        },
        "TimelineEntry": {
            "type": "object",
            "required": ["at", "state"],
            "description": "One state change; fields without a value are omitted.",
            "properties": {
                "at": timestamp_out,
                "state": state,
                "channel": {"type": "string"},
                "attempt": {"type": "integer"},
                "outcome": {"type": "string", "enum": [o.name.lower() for o in Outcome]},
                "provider_id": {"type": "string"},
                "latency_ms": {"type": "number"},
                "detail": {"type": "string"},
            },
        },
        "MessageSummary": {
            "type": "object",
            "description": "A stored message; fields without a value are omitted.",
            "required": [
                "id",
                "channel",
                "to",
                "body",
                "priority",
                "state",
                "attempts",
                "created_at",
                "updated_at",
            ],
            "properties": {
                "id": _ref("MessageId"),
                "channel": {"type": "string"},
                "to": {"type": "string"},
                "from": {"type": "string"},
                "body": {"type": "string"},
                "priority": priority,
                "state": state,
                "attempts": {"type": "integer", "minimum": 0},
                "created_at": timestamp_out,
                "updated_at": timestamp_out,
                "not_before": timestamp_out,
                "expires_at": timestamp_out,
                "provider_id": {"type": "string"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "callback_url": {"type": "string"},
            },
        },
        "MessageDetail": {
            "allOf": [
                _ref("MessageSummary"),
                {
                    "type": "object",
                    "required": ["timeline"],
                    "properties": {"timeline": {"type": "array", "items": _ref("TimelineEntry")}},
                },
            ]
        },
        "MessagePage": {
            "type": "object",
            "required": ["messages", "next_cursor"],
            "properties": {
                "messages": {
                    "type": "array",
                    "items": _ref("MessageSummary"),
                    "description": "Newest first.",
                },
                "next_cursor": _nullable(
                    {"type": "string", "description": "Pass as `cursor` for the next page."}
                ),
            },
        },
        "CancelResponse": {
            "type": "object",
            "required": ["id", "state"],
            "properties": {"id": _ref("MessageId"), "state": {"const": "cancelled"}},
        },
        "ChannelStatus": {
            "type": "object",
            "required": [
                "name",
                "type",
                "width",
                "rate",
                "current_rate",
                "burst",
                "in_flight",
                "pending",
                "breaker",
                "failover",
                "sent",
                "failed",
                "retried",
            ],
            "properties": {
                "name": {"type": "string"},
                "type": {"type": "string"},
                "width": {"type": "integer", "description": "Messages in flight at most."},
                "rate": {"type": "number", "description": "Configured messages/s; 0 = unlimited."},
                "current_rate": {
                    "type": "number",
                    "description": "Rate in force after the peer's throttling answers.",
                },
                "burst": {"type": "integer"},
                "in_flight": {"type": "integer"},
                "pending": {"type": "integer", "description": "Queue depth."},
                "breaker": {
                    "type": "string",
                    "enum": ["closed", "half_open", "open", "none"],
                    "description": "This process's breaker for the channel; none in a process "
                    'that does not deliver (server.role = "api"). in_flight, current_rate, '
                    "sent, failed and retried are this process's too.",
                },
                "failover": _nullable({"type": "string"}),
                "sent": {"type": "integer"},
                "failed": {"type": "integer"},
                "retried": {"type": "integer"},
            },
        },
        "ChannelList": {
            "type": "object",
            "required": ["channels"],
            "properties": {"channels": {"type": "array", "items": _ref("ChannelStatus")}},
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "ready"]}},
        },
        "Error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable, for programs."},
                "message": {"type": "string", "description": "What was wrong, for people."},
                "field": {
                    "type": "string",
                    "description": "The field, parameter or header at fault, as a path: "
                    "messages[3].to, limit, Idempotency-Key.",
                },
            },
        },
        "ErrorBody": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _ref("Error")},
        },
        "TooLate": {
            "type": "object",
            "required": ["error", "id", "state"],
            "properties": {
                "error": _ref("Error"),
                "id": _ref("MessageId"),
                "state": {**state, "description": "The state that made cancelling too late."},
            },
        },
    }


_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer", "minimum": 1},
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": _error_response(
        "The body is not JSON (the message gives the position), a header is malformed, or "
        "the request is not valid HTTP/1.1 (the connection is then closed).",
        ["malformed_json", "bad_request"],
    ),
    "RequestTimeout": _error_response(
        "The request's headers did not arrive within server.header_timeout_seconds; the "
        "connection is closed.",
        ["request_timeout"],
    ),
    "RequestLineTooLong": _error_response(
        "The request line is longer than server.max_request_line_bytes; the connection is closed.",
        ["request_line_too_long"],
    ),
    "HeadersTooLarge": _error_response(
        "The headers are larger than server.max_header_bytes or more than server.max_headers "
        "fields; the connection is closed.",
        ["headers_too_large"],
    ),
    "Unauthorized": _error_response(
        "The API key is missing, malformed or unknown.",
        ["unauthorized"],
        **{"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    ),
    "NotFound": _error_response(
        "No such message for this API key's tenant (or no such endpoint).", ["not_found"]
    ),
    "MethodNotAllowed": _error_response(
        "The path exists but not with this method.",
        ["method_not_allowed"],
        Allow={"schema": {"type": "string"}, "description": "The methods the path allows."},
    ),
    "TooLarge": _error_response(
        "The body is over limits.max_request_bytes, the batch over limits.max_batch, or over "
        "the tenant's burst.",
        ["request_too_large", "batch_too_large"],
    ),
    "UnsupportedMediaType": _error_response(
        "The body is not sent as application/json.", ["unsupported_media_type"]
    ),
    "Unprocessable": _error_response(
        "A field is missing, mistyped, unknown or out of its limits; `field` names it. A "
        "batch with one such message stores nothing.",
        [
            "invalid_message",
            "too_deep",
            "unknown_channel",
            "channel_not_allowed",
            "invalid_idempotency_key",
            "idempotency_key_reused",
            "invalid_parameter",
            "not_urgent",
        ],
    ),
    "TooManyRequests": _error_response(
        "Admission refused: the gateway's backlog is full or the tenant is over its rate. "
        "Nothing was stored.",
        ["backlog_full", "rate_limited"],
        **{"Retry-After": _RETRY_AFTER},
    ),
    "Unavailable": _error_response(
        "Not served now; nothing was stored (for `unavailable`: nothing is known to be "
        "stored). `overloaded`: the gateway is taking all the requests it can serve in time "
        "(refused before the body was read); `deadline_passed`: the request waited longer "
        "than admission.request_deadline_seconds; `too_many_connections`: the process holds "
        "server.max_connections; `unavailable`: the message store failed; `not_ready`: "
        "starting or shutting down.",
        ["overloaded", "deadline_passed", "too_many_connections", "unavailable", "not_ready"],
        **{"Retry-After": _RETRY_AFTER},
    ),
    "InternalError": _error_response("An unexpected error; it was logged.", ["internal_error"]),
}


def _common(*extra: tuple[str, str]) -> dict[str, Any]:
    responses = {
        "408": _response_ref("RequestTimeout"),
        "414": _response_ref("RequestLineTooLong"),
        "431": _response_ref("HeadersTooLarge"),
        "500": _response_ref("InternalError"),
    }
    for status, name in extra:
        responses[status] = _response_ref(name)
    return responses


_AUTH = [("401", "Unauthorized")]
_MESSAGE_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": _ref("MessageId"),
}


def _paths(config: Config) -> dict[str, Any]:
    limits = config.limits
    public: list[dict[str, Any]] = []  # no API key needed
    return {
        "/v1/messages": {
            "post": {
                "operationId": "submitMessages",
                "summary": "Submit one message or a batch",
                "description": "Answers once the messages are stored durably. A batch is all "
                "or nothing. Admission may refuse with 429 or 503 before the body is read.",
                "parameters": [
                    {
                        "name": "Sluice-Priority",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "enum": ["urgent"]},
                        "description": "`urgent`: admitted ahead of bulk traffic when the "
                        "gateway sheds load, and into the backlog's urgent reserve; every "
                        "message must then be urgent (422 not_urgent).",
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": limits.max_idempotency_key_length,
                        },
                        "description": "Repeating a request with the same key answers as the "
                        "first request was answered (202, its ids, `Idempotent-Replayed: "
                        "true`) and stores nothing. Requests are compared as parsed, so "
                        "whitespace, key order and escapes do not matter; the same key with a "
                        "different request is refused (422 idempotency_key_reused).",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": _json_content({"oneOf": [_ref("MessageIn"), _ref("Batch")]}),
                },
                "responses": {
                    "202": {
                        "description": "Stored (or, marked by Idempotent-Replayed, stored "
                        "before under the same Idempotency-Key: its ids, nothing new stored).",
                        "content": _json_content(_ref("SubmitResponse")),
                        "headers": {
                            "Idempotent-Replayed": {
                                "schema": {"type": "string", "enum": ["true"]},
                                "description": "Present on the answer to a repeated "
                                "Idempotency-Key.",
                            }
                        },
                    },
                    **_common(
                        ("400", "BadRequest"),
                        *_AUTH,
                        ("413", "TooLarge"),
                        ("415", "UnsupportedMediaType"),
                        ("422", "Unprocessable"),
                        ("429", "TooManyRequests"),
                        ("503", "Unavailable"),
                    ),
                },
            },
            "get": {
                "operationId": "listMessages",
                "summary": "Messages to one recipient, newest first",
                "parameters": [
                    {
                        "name": "to",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "The recipient, percent-encoded; a literal + stays +.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": limits.max_page_size,
                            "default": 100,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page, unchanged.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One page.",
                        "content": _json_content(_ref("MessagePage")),
                    },
                    **_common(*_AUTH, ("422", "Unprocessable"), ("503", "Unavailable")),
                },
            },
        },
        "/v1/messages/{id}": {
            "parameters": [_MESSAGE_ID_PARAM],
            "get": {
                "operationId": "getMessage",
                "summary": "A message, its state and its timeline",
                "responses": {
                    "200": {
                        "description": "The message.",
                        "content": _json_content(_ref("MessageDetail")),
                    },
                    **_common(*_AUTH, ("404", "NotFound"), ("503", "Unavailable")),
                },
            },
            "delete": {
                "operationId": "cancelMessage",
                "summary": "Cancel a message that has not been handed to a channel yet",
                "responses": {
                    "200": {
                        "description": "Cancelled, now or by an earlier DELETE (DELETE is "
                        "idempotent).",
                        "content": _json_content(_ref("CancelResponse")),
                    },
                    "409": {
                        "description": "Too late: the message is already being sent, sent, "
                        "delivered, failed or expired. Error code: too_late.",
                        "content": _json_content(_ref("TooLate")),
                    },
                    **_common(*_AUTH, ("404", "NotFound"), ("503", "Unavailable")),
                },
            },
        },
        "/v1/channels": {
            "get": {
                "operationId": "listChannels",
                "summary": "Delivery channels and their live status",
                "responses": {
                    "200": {
                        "description": "Every configured channel.",
                        "content": _json_content(_ref("ChannelList")),
                    },
                    **_common(*_AUTH),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: 200 while the process serves",
                "security": public,
                "responses": {
                    "200": {"description": "Alive.", "content": _json_content(_ref("Status"))},
                    **_common(),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: 200 once the journal is open and channels run",
                "security": public,
                "responses": {
                    "200": {"description": "Ready.", "content": _json_content(_ref("Status"))},
                    "503": _error_response(
                        "Starting or shutting down, or the journal cannot serve (the message "
                        "says why: a damaged file, a disk below its reserve, PostgreSQL out of "
                        "reach).",
                        ["not_ready"],
                    ),
                    **_common(),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": "Names every tenant with its volumes: served on "
                "server.admin_listen when it is set (404 here), and asking for "
                "`Authorization: Bearer <server.metrics_token>` when that is set.",
                "security": public
                if config.server.metrics_token is None
                else [{"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_common(*_AUTH, ("404", "NotFound")),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": public,
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": _json_content({"type": "object"}),
                    },
                    **_common(),
                },
            }
        },
    }


_ID_SCHEMA_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$"


def _audience_schemas(config: Config) -> dict[str, Any]:
    audience = config.audience
    name = {
        "type": "string",
        "pattern": _ID_SCHEMA_PATTERN,
        "description": "1 to 128 of A-Z a-z 0-9 . _ : @ + = -, starting with a letter or digit.",
    }
    address = {"type": "string", "minLength": 1, "maxLength": audience.max_address_length}
    channel_type = {"type": "string", "enum": list(CHANNEL_TYPES)}
    time_of_day = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
    timestamp_out = {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, UTC, milliseconds: 2025-01-01T00:00:00.000Z",
    }
    topics = {
        "type": "array",
        "items": _ref("Name"),
        "maxItems": audience.max_topics,
        "description": "Topics to subscribe to (added to those followed; never removed by a "
        "write of the subscriber). A topic not there yet is created.",
    }
    fields: dict[str, Any] = {
        "id": {**name, "description": "The tenant's own id for the subscriber."},
        "phone": {**address, "description": "Address for SMS channels."},
        "email": {**address, "description": "Address for email channels."},
        "webhook": {**address, "description": "URL for webhook channels."},
        "push": {**address, "description": "Key for the live push channel."},
        "attributes": {
            "type": "object",
            "description": f"For templates; at most {audience.max_attributes_bytes} bytes "
            "as JSON (audience.max_attributes_bytes).",
        },
        "timezone": {"type": "string", "default": "UTC", "description": "An IANA time zone."},
        "locale": {"type": "string", "maxLength": 35, "description": "A BCP 47 tag."},
        "quiet_hours": _ref("QuietHours"),
        "opt_out": _ref("OptOut"),
    }
    return {
        "Name": name,
        "QuietHours": {
            "type": "object",
            "description": "Local times between which nothing is sent; end before start spans "
            "midnight.",
            "required": ["start", "end"],
            "additionalProperties": False,
            "properties": {"start": time_of_day, "end": time_of_day},
        },
        "OptOut": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "all": {"type": "boolean", "default": False},
                "channels": {"type": "array", "items": channel_type},
                "topics": {"type": "array", "items": _ref("Name")},
                "topic_channels": {
                    "type": "object",
                    "description": "Topic name to the channel types opted out of on it.",
                    "additionalProperties": {"type": "array", "items": channel_type},
                },
            },
        },
        "SubscriberIn": {
            "type": "object",
            "description": "A subscriber to create or replace. Unknown fields are refused "
            "(422). In PUT /v1/subscribers/{id} the id may be left out (the path's is used).",
            "required": ["id"],
            "additionalProperties": False,
            "properties": {**fields, "topics": topics},
        },
        "Subscriber": {
            "type": "object",
            "description": "A stored subscriber; fields at their default are omitted.",
            "required": ["id", "topics", "updated_at"],
            "properties": {
                **fields,
                "topics": {
                    "type": "array",
                    "items": _ref("Name"),
                    "description": "Topics followed, by name.",
                },
                "updated_at": timestamp_out,
            },
        },
        "SubscriberDeleted": {
            "type": "object",
            "required": ["id", "deleted"],
            "properties": {"id": _ref("Name"), "deleted": {"const": True}},
        },
        "ImportError": {
            "type": "object",
            "required": ["line", "message"],
            "properties": {
                "line": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Line within the request where the record starts (a CSV's "
                    "header is line 1).",
                },
                "field": {"type": "string", "description": "The field or CSV column at fault."},
                "message": {"type": "string"},
            },
        },
        "ImportResult": {
            "type": "object",
            "required": [
                "lines",
                "created",
                "updated",
                "subscribed",
                "errors",
                "errors_not_listed",
            ],
            "properties": {
                "lines": {"type": "integer", "description": "Records read (blank lines not)."},
                "created": {"type": "integer"},
                "updated": {"type": "integer"},
                "subscribed": {
                    "type": "integer",
                    "description": "Subscriptions added (not those there already).",
                },
                "errors": {
                    "type": "array",
                    "items": _ref("ImportError"),
                    "maxItems": audience.max_import_errors,
                    "description": "The records refused (the others were stored), at most "
                    "audience.max_import_errors.",
                },
                "errors_not_listed": {
                    "type": "integer",
                    "description": "Records refused beyond those listed.",
                },
            },
        },
        "TopicIn": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _ref("Name")},
        },
        "Topic": {
            "type": "object",
            "required": ["name", "subscribers", "created_at"],
            "properties": {
                "name": _ref("Name"),
                "subscribers": {"type": "integer", "minimum": 0},
                "created_at": timestamp_out,
            },
        },
        "TopicPage": {
            "type": "object",
            "required": ["topics", "next"],
            "properties": {
                "topics": {"type": "array", "items": _ref("Topic"), "description": "By name."},
                "next": _nullable(
                    {"type": "string", "description": "Pass as `after` for the next page."}
                ),
            },
        },
        "TopicDeleted": {
            "type": "object",
            "required": ["name", "deleted"],
            "properties": {"name": _ref("Name"), "deleted": {"const": True}},
        },
        "SubscriberIds": {
            "type": "object",
            "required": ["ids"],
            "additionalProperties": False,
            "properties": {
                "ids": {
                    "type": "array",
                    "items": _ref("Name"),
                    "maxItems": audience.max_import_lines,
                }
            },
        },
        "SubscribeResult": {
            "type": "object",
            "required": ["added", "already", "unknown"],
            "properties": {
                "added": {"type": "integer"},
                "already": {"type": "integer", "description": "Subscribed before."},
                "unknown": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Ids that name no subscriber of the tenant.",
                },
            },
        },
        "UnsubscribeResult": {
            "type": "object",
            "required": ["removed"],
            "properties": {"removed": {"type": "integer"}},
        },
    }


_AUDIENCE_RESPONSES: dict[str, Any] = {
    "AudienceNotFound": _error_response(
        "No such subscriber or topic for this API key's tenant.", ["not_found"]
    ),
    "AudienceUnprocessable": _error_response(
        "A field is missing, mistyped, unknown or out of its limits; `field` names it. For an "
        "import: the CSV header names an unknown column (all of them in the message, the "
        "first as `field`), a column twice, or no `id`; nothing was stored.",
        [
            "invalid_subscriber",
            "invalid_topic",
            "invalid_request",
            "invalid_csv",
            "too_deep",
            "too_many_topics",
        ],
    ),
    "ImportTooLarge": _error_response(
        "The body is over limits.max_request_bytes, or holds more records (or ids) than "
        "audience.max_import_lines; nothing was stored.",
        ["request_too_large", "import_too_large"],
    ),
}


def _audience_paths(config: Config) -> dict[str, Any]:
    audience = config.audience
    json_body = {
        "400": _response_ref("BadRequest"),
        "415": _response_ref("UnsupportedMediaType"),
        "422": _response_ref("AudienceUnprocessable"),
    }
    failures = _common(*_AUTH, ("503", "Unavailable"))
    not_found = {"404": _response_ref("AudienceNotFound")}
    ids_body = {"required": True, "content": _json_content(_ref("SubscriberIds"))}

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {"description": description, "content": _json_content(_ref(schema))}

    def name_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": _ref("Name")}

    return {
        "/v1/subscribers/{id}": {
            "parameters": [name_param("id")],
            "put": {
                "operationId": "putSubscriber",
                "summary": "Create or replace a subscriber, and subscribe it to topics",
                "description": "The path's id is the subscriber's; an `id` in the body must "
                "be the same (422 otherwise). Topics are added, never removed.",
                "requestBody": {"required": True, "content": _json_content(_ref("SubscriberIn"))},
                "responses": {
                    "201": answer("Created.", "Subscriber"),
                    "200": answer("Replaced.", "Subscriber"),
                    "413": _response_ref("TooLarge"),
                    **json_body,
                    **failures,
                },
            },
            "get": {
                "operationId": "getSubscriber",
                "summary": "A subscriber and the topics it follows",
                "responses": {
                    "200": answer("The subscriber.", "Subscriber"),
                    **not_found,
                    **failures,
                },
            },
            "delete": {
                "operationId": "deleteSubscriber",
                "summary": "Delete a subscriber and its subscriptions",
                "responses": {
                    "200": answer("Deleted.", "SubscriberDeleted"),
                    **not_found,
                    **failures,
                },
            },
        },
        "/v1/subscribers/import": {
            "post": {
                "operationId": "importSubscribers",
                "summary": "Create or replace many subscribers: NDJSON or CSV",
                "description": "At most audience.max_import_lines "
                f"({audience.max_import_lines}) records, stored in one transaction; blank "
                "lines are skipped. A bad record is reported (its line and field) and the "
                "others are stored; a later record with the same id wins. NDJSON "
                "(`application/x-ndjson`): one SubscriberIn object a line. CSV (`text/csv`, "
                "UTF-8, a byte order mark allowed): a header row, then one subscriber a record, "
                "an empty cell a field not given. Columns: id, phone, email, webhook, push, "
                "timezone, locale, quiet_start, quiet_end, topics (;-separated), opt_out "
                '("all" or ;-separated channel types), opt_out_topics (;-separated), '
                "attributes (a JSON object), and attr.NAME (attribute NAME, a string).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "200": answer("Read; the good records stored.", "ImportResult"),
                    "400": _response_ref("BadRequest"),
                    "413": _response_ref("ImportTooLarge"),
                    "415": _response_ref("UnsupportedMediaType"),
                    "422": _response_ref("AudienceUnprocessable"),
                    **failures,
                },
            }
        },
        "/v1/topics": {
            "post": {
                "operationId": "createTopic",
                "summary": "Create a topic",
                "requestBody": {"required": True, "content": _json_content(_ref("TopicIn"))},
                "responses": {
                    "201": answer("Created.", "Topic"),
                    "200": answer("It existed.", "Topic"),
                    "413": _response_ref("TooLarge"),
                    **json_body,
                    **failures,
                },
            },
            "get": {
                "operationId": "listTopics",
                "summary": "The tenant's topics, by name",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "`next` of the previous page.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": audience.max_page_size,
                            "default": audience.page_size,
                        },
                    },
                ],
                "responses": {
                    "200": answer("One page.", "TopicPage"),
                    "422": _response_ref("Unprocessable"),
                    **failures,
                },
            },
        },
        "/v1/topics/{name}": {
            "parameters": [name_param("name")],
            "get": {
                "operationId": "getTopic",
                "summary": "A topic and its count of subscribers",
                "responses": {"200": answer("The topic.", "Topic"), **not_found, **failures},
            },
            "delete": {
                "operationId": "deleteTopic",
                "summary": "Delete a topic and its subscriptions (not the subscribers)",
                "responses": {
                    "200": answer("Deleted.", "TopicDeleted"),
                    **not_found,
                    **failures,
                },
            },
        },
        "/v1/topics/{name}/subscribers": {
            "parameters": [name_param("name")],
            "post": {
                "operationId": "subscribe",
                "summary": "Subscribe existing subscribers to a topic, by id",
                "requestBody": ids_body,
                "responses": {
                    "200": answer("Subscribed.", "SubscribeResult"),
                    "413": _response_ref("ImportTooLarge"),
                    **json_body,
                    **not_found,
                    **failures,
                },
            },
        },
        "/v1/topics/{name}/unsubscribe": {
            "parameters": [name_param("name")],
            "post": {
                "operationId": "unsubscribe",
                "summary": "Take subscribers off a topic, by id",
                "requestBody": ids_body,
                "responses": {
                    "200": answer("Unsubscribed.", "UnsubscribeResult"),
                    "413": _response_ref("ImportTooLarge"),
                    **json_body,
                    **not_found,
                    **failures,
                },
            },
        },
    }


def openapi_document(config: Config) -> dict[str, Any]:
    """The OpenAPI document for an app running with `config` (its limits appear in it)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Sluice message gateway",
            "version": API_VERSION,
            "description": "Submit messages for durable, rate-limited delivery and follow "
            'their state. Every error answers {"error": {"code", "message", "field"?}}; '
            "fields without a value are omitted from message views. Every answer carries a "
            "`Request-Id` header, also written in the gateway's logs: the client's own "
            "`X-Request-Id` (1 to 128 of A-Z a-z 0-9 . _ : / + = -) when it sends one, else one "
            "drawn by the gateway.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "security": [{"bearerAuth": []}],
        "paths": {
            **_paths(config),
            **_audience_paths(config),
            **broadcast_paths(_common(*_AUTH, ("503", "Unavailable"))),
            **push_paths(config.push, _common(*_AUTH)),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key configured (as its sha256) for a tenant.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "server.metrics_token, for /metrics.",
                },
            },
            "schemas": {
                **_schemas(config),
                **_audience_schemas(config),
                **broadcast_schemas(config),
                **push_schemas(config.push),
            },
            "responses": {**_RESPONSES, **_AUDIENCE_RESPONSES, **BROADCAST_RESPONSES},
        },
    }
