"""How an SMTP answer maps to an outcome, the attempt's detail and the provider id.

Answers map to outcomes the way RFC 5321 means them: 2xx at the end of DATA → sent, with the
server's queue id (``250 2.0.0 Ok: queued as ABC123``) as provider id; 4xx at any step →
transient; 5xx → permanent. The server's reply is the attempt's detail.
"""

from __future__ import annotations

import re

from sluice.model import Outcome

#: Queue ids in final replies: Postfix and most others "queued as ID", Exim "id=ID".
_QUEUE_ID = re.compile(r"(?:\bqueued as\s+<?|\bid=)([A-Za-z0-9][\w.@-]*)", re.IGNORECASE)


def classify(code: int) -> Outcome:
    """An SMTP reply code as an outcome: 2xx sent, 4xx transient, 5xx permanent."""
    if 200 <= code < 300:
        return Outcome.SENT
    if 500 <= code < 600:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT  # 4xx, and anything a server should not have said


def reply_text(code: int, message: str) -> str:
    """A reply on one line as the server sent it: ``451 4.7.1 Greylisted, try later``."""
    return " ".join([str(code), *message.split()]) if message else str(code)


def queue_id(message: str) -> str | None:
    """The server's queue id in the text of a final reply, if it gives one."""
    match = _QUEUE_ID.search(message)
    return match.group(1).rstrip(".") if match else None
