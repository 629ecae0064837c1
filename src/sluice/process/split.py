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
    >>> empty = b"# HELP s S.\\n# TYPE s histogram\\n"
    >>> owner = own + empty + b"s_count 3.0\\n# HELP b B.\\n# TYPE b gauge\\nb 2.0\\n"
    >>> merged = merge_metrics(own + empty, owner).decode()
    >>> merged.count("# HELP"), "s_count 3.0" in merged, merged.count("a_total 1.0")
    (3, True, 1)
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
    """One exposition of both processes' families (the format forbids a family twice): the
    owner's where the edge's has no samples (the send latencies, a Redis rate that only the
    owner uses) or the edge lacks it, the edge's otherwise (its HTTP, admission, acceptance
    and refusal figures), the edge's first."""
    mine, theirs = _families(own), _families(owner)
    kept = {n: lines for n, lines in mine.items() if _has_samples(lines) or n not in theirs}
    rest = [lines for name, lines in theirs.items() if name not in kept]
    return b"".join(b"".join(lines) for lines in [*kept.values(), *rest])


def _families(text: bytes) -> dict[bytes, list[bytes]]:
    """The exposition's lines by family, in order (a family starts at its `# HELP` line)."""
    families: dict[bytes, list[bytes]] = {}
    current: list[bytes] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            current = families.setdefault(line.split(b" ", 3)[2], [])
        current.append(line)
    return families


def _has_samples(lines: list[bytes]) -> bool:
    return any(not line.startswith(b"#") and line.strip() for line in lines)
