"""The embedded journal's split (`server.api_processes`): what the owner tells the edges
beyond the journal, and how an edge process shows it.

The owner (the process that holds the SQLite file and delivers) pushes an annex with its
journal state once a second: the channel figures of its runners (for `GET /v1/channels`) and
its metrics (the delivery side's: runners, journal, expander, SMPP binds). An edge's
`/metrics` is its own families (HTTP, admission, accepted, refused) followed by the owner's
others, so one scrape of the port shows the whole gateway; the owner's part is at most
`ANNEX_INTERVAL_SECONDS` old.

Examples:
    >>> own = b"# HELP a_total A.\\n# TYPE a_total counter\\na_total 1.0\\n"
    >>> owner = own + b"# HELP b B.\\n# TYPE b gauge\\nb 2.0\\n"
    >>> merge_metrics(own, owner).decode().count("# HELP")
    2
"""

from __future__ import annotations

import msgspec

from sluice.ingress.contract import ChannelStatus


class OwnerAnnex(msgspec.Struct, frozen=True):
    #: Every configured channel with the owner's runner figures.
    channels: list[ChannelStatus]
    #: The owner's metrics, in Prometheus' text format.
    metrics: bytes


_ANNEX_DECODER = msgspec.msgpack.Decoder(OwnerAnnex)


def encode_annex(annex: OwnerAnnex) -> bytes:
    return msgspec.msgpack.encode(annex)


def decode_annex(data: bytes) -> OwnerAnnex | None:
    """The annex, or None before the owner sent one."""
    if not data:
        return None
    return _ANNEX_DECODER.decode(data)


def merge_metrics(own: bytes, owner: bytes) -> bytes:
    """`own` followed by the families of `owner` that `own` does not have (the exposition
    format forbids a family twice; both processes register the same counters)."""
    names = {line.split(b" ", 3)[2] for line in own.splitlines() if line.startswith(b"# HELP ")}
    kept: list[bytes] = []
    keep = True
    for line in owner.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            keep = line.split(b" ", 3)[2] not in names
        if keep:
            kept.append(line)
    return own + b"".join(kept)
