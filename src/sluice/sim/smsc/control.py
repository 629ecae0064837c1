"""The SMSC simulator's control endpoints (``SmscSimulator.start_control``).

Endpoints:
    ``GET /_smsc/stats``               the counts as JSON
    ``GET /_smsc/received?limit=100``  the last ``limit`` (default 1000) accepted messages
    ``GET /_smsc/config``              current options (passwords shown as "***")
    ``POST /_smsc/config``             change options: ``{"error_ratio": 0.1}``; an unknown
                                       key or a bad value is a 400 naming it
    ``POST /_smsc/reset``              zero every count and forget the record
    ``POST /_smsc/mo``                 ``{"from", "to", "body", "account"?, "data_coding"?}``:
                                       send an MO; 409 when no receiver is bound
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from sluice.sim.control import ControlRoutes, error_body, json_object, json_response
from sluice.sim.smsc.mo import NoReceiverBound

if TYPE_CHECKING:
    from sluice.sim.smsc.server import SmscSimulator

#: Paths under this prefix are the control endpoints.
CONTROL_PREFIX = "/_smsc/"
#: Default ``limit`` of ``GET /_smsc/received``: a page a terminal or a test can read.
DEFAULT_RECEIVED_LIMIT = 1000

_MO_FIELDS = ("from", "to", "body", "account", "data_coding")


def smsc_routes(smsc: SmscSimulator) -> ControlRoutes:
    """The control endpoints of ``smsc``: the common ones, ``received`` and ``mo``."""

    async def get_received(request: web.BaseRequest) -> web.Response:
        raw = request.query.get("limit", str(DEFAULT_RECEIVED_LIMIT))
        if not raw.isdigit():
            return json_response(
                400, error_body(f"limit: expected a whole number of messages, got {raw!r}")
            )
        return json_response(200, msgspec.json.encode(smsc.received(int(raw))))

    async def post_mo(request: web.BaseRequest) -> web.Response:
        body = await json_object(request, "mo")
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - set(_MO_FIELDS))
        if unknown:
            return json_response(
                400, error_body(f"{unknown[0]}: unknown MO field; known: {', '.join(_MO_FIELDS)}")
            )
        for key in ("from", "to", "body"):
            if not isinstance(body.get(key), str):
                return json_response(
                    400, error_body(f"{key}: required string, got {body.get(key)!r}")
                )
        try:
            sent = smsc.send_mo(
                body["from"],
                body["to"],
                body["body"],
                account=body.get("account"),
                data_coding=body.get("data_coding"),
            )
        except NoReceiverBound as exc:
            return json_response(409, error_body(str(exc)))
        except ValueError as exc:
            return json_response(400, error_body(str(exc)))
        return json_response(200, msgspec.json.encode(sent))

    return ControlRoutes(
        CONTROL_PREFIX, smsc, {("GET", "received"): get_received, ("POST", "mo"): post_mo}
    )
