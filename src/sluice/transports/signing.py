"""HMAC-SHA256 signatures on outbound HTTP requests (webhooks and status callbacks).

The receiver recomputes ``hex(HMAC-SHA256(secret, f"{timestamp}." + body))`` and compares it
with the ``Sluice-Signature: v1=<hex>`` header, and rejects a ``Sluice-Timestamp`` too far from
its clock to stop replays.

Examples:
    >>> signature(b"s3cret", "1700000000", b"{}")[:10]
    'v1=9792681'
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Sluice-Signature"
TIMESTAMP_HEADER = "Sluice-Timestamp"
MESSAGE_ID_HEADER = "Sluice-Message-Id"
PROVIDER_ID_HEADER = "Sluice-Provider-Id"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, timestamp, body), header)
