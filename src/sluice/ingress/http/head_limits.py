"""The bounds on an HTTP request's head and the deadlines of a connection, with the answers
that refuse a request past them, composed once per server (`server.*` settings).

Examples:
    limits = HeadLimits(config.server)
    limits.head_bytes            # the most bytes one head may take on the wire
    limits.headers_too_large     # the 431 to write
"""

from __future__ import annotations

from sluice.config import ServerConfig
from sluice.ingress.http.gate import FastAnswer, error_answer


class HeadLimits:
    """`server.max_request_line_bytes`, `max_header_bytes`, `max_headers` and the deadlines
    (`header_timeout_seconds`, `body_timeout_seconds`, `keep_alive_seconds`)."""

    __slots__ = (
        "body_timeout",
        "head_bytes",
        "header_timeout",
        "header_timeout_answer",
        "headers_too_large",
        "keep_alive",
        "line_too_long",
        "max_headers",
        "max_headers_bytes",
        "max_line",
    )

    def __init__(self, server: ServerConfig) -> None:
        self.max_line = server.max_request_line_bytes
        self.max_headers_bytes = server.max_header_bytes
        self.max_headers = server.max_headers
        self.header_timeout = server.header_timeout_seconds
        self.body_timeout = server.body_timeout_seconds
        self.keep_alive = server.keep_alive_seconds
        #: The most bytes a head within both limits can take on the wire (CRLFs, ": ").
        self.head_bytes = self.max_line + self.max_headers_bytes + 4 * self.max_headers + 4
        self.line_too_long: FastAnswer = error_answer(
            414,
            "request_line_too_long",
            f"the request line is longer than {self.max_line} bytes "
            "(server.max_request_line_bytes)",
        )
        self.headers_too_large: FastAnswer = error_answer(
            431,
            "headers_too_large",
            f"the headers are larger than {self.max_headers_bytes} bytes "
            f"(server.max_header_bytes) or more than {self.max_headers} fields "
            "(server.max_headers)",
        )
        self.header_timeout_answer: FastAnswer = error_answer(
            408,
            "request_timeout",
            f"the request's headers did not arrive within {self.header_timeout:g} s "
            "(server.header_timeout_seconds)",
        )
