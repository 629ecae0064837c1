"""Greylisting at RCPT TO, after postgrey.

Mail for a new (client network, sender, recipient) triplet is refused once with a temporary
error. A real mail server queues the message and retries; most spamware never does. A retry
after ``delay`` and within ``retry_window`` of the first attempt passes, and the triplet is
then remembered as passed for ``max_age`` after its latest pass.

The triplet:
    * client network: the /24 of an IPv4 client, the /64 of an IPv6 one (postgrey's
      ``--lookup-by-subnet``: big senders retry from another host of the same farm). An
      IPv4-mapped IPv6 client counts as the IPv4 client it is.
    * sender: lower-cased, with a ``+extension`` stripped from the local part
      (``Bob+list-4711@Example.org`` is ``bob@example.org``), where mailing lists put a tag
      per recipient or per message (VERP). Postgrey also replaces stand-alone numbers in the
      local part (``bounce-4711``) with ``#``; we keep them.
    * recipient: lower-cased.

Verdict reasons (``GreylistVerdict.reason``):
    ``allowlisted-client``, ``allowlisted-recipient``
        passed: the client or the recipient is on a configured allow list.
    ``auto-allowlisted``
        passed: the client network passed greylisting ``auto_allowlist_passes`` times, each
        counted at most once per ``pass_interval`` (postgrey's ``--auto-whitelist-clients``).
    ``passed``
        passed: a retry after ``delay``, or a triplet remembered as passed.
    ``new``
        refused: a triplet never seen, or forgotten after ``max_age`` since its last pass.
    ``early``
        refused: a retry before ``delay`` (the timer keeps running from the first attempt).
    ``expired-retry``
        refused: the first retry came after ``retry_window``; the timer restarts.

Storage: a triplet is a 60-bit BLAKE2b hash of its normalised text in a ``dict[int, int]``
whose value packs the time of the first attempt (or of the latest pass) in milliseconds with
a passed bit. Measured on CPython 3.11 x86-64 with 100,000 to 1,000,000 triplets: 106 to 124
bytes per triplet, 32 each for the key and value ints and 42 to 60 for the dict, depending on
how full it is since its last resize; about 110 MB per million triplets. A client network
counting towards the auto-allowlist costs the same. A snapshot takes 16 bytes per entry.

Examples:
    >>> now = [0.0]
    >>> greylist = Greylist(delay=300, clock=lambda: now[0])
    >>> verdict = greylist.check("192.0.2.1", "Alice@Example.com", "bob@example.org")
    >>> verdict
    GreylistVerdict(passed=False, reason='new', retry_after=300.0)
    >>> reply(verdict)
    (451, '4.7.1 Greylisted: mail from a new sender is delayed, please try again in 300 seconds')
    >>> now[0] = 360
    >>> greylist.check("192.0.2.99", "alice+news@example.com", "BOB@example.org").reason
    'passed'
"""

from __future__ import annotations

import math
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterable
from hashlib import blake2b
from typing import Any, Literal

import msgspec

from sluice.screening.access import AccessList, Address, client_address

GreylistReason = Literal[
    "allowlisted-client",
    "allowlisted-recipient",
    "auto-allowlisted",
    "passed",
    "new",
    "early",
    "expired-retry",
]

# Python ints below 2**60 take 32 bytes, 64-bit ones 36; 60 bits still leave a collision
# among a million triplets at odds of about one in two million.
_KEY_BITS = 60
_PASSED = 1  # low bit of a triplet's packed state
_COUNT_BITS = 8  # low bits of a client network's packed state: passes counted so far
_COUNT_MASK = (1 << _COUNT_BITS) - 1

_MAGIC = b"SLGL"
_VERSION = 1
_HEADER = struct.Struct("<4sHxxQQ")  # magic, version, triplets, client networks


class GreylistVerdict(msgspec.Struct, frozen=True):
    """Whether the recipient passes greylisting, why, and how long a retry has to wait."""

    passed: bool
    reason: GreylistReason
    retry_after: float = 0.0  # seconds until a retry of this triplet would pass; 0 if passed


_ALLOWLISTED_CLIENT = GreylistVerdict(True, "allowlisted-client")
_ALLOWLISTED_RECIPIENT = GreylistVerdict(True, "allowlisted-recipient")
_AUTO_ALLOWLISTED = GreylistVerdict(True, "auto-allowlisted")
_PASSED_VERDICT = GreylistVerdict(True, "passed")


def reply(verdict: GreylistVerdict, help_url: str | None = None) -> tuple[int, str]:
    """The SMTP reply for a refused recipient: ``(451, "4.7.1 Greylisted: ...")``.

    The text ends up in the bounce a sender gets if its server gives up, so it says in
    plain words that the refusal is temporary and when to retry; ``help_url`` is appended
    as ``(see URL)``, like postgrey's ``--greylist-text``.
    """
    if verdict.passed:
        raise ValueError(f"a passed verdict ({verdict.reason}) has no refusal reply")
    if help_url is not None and ("\r" in help_url or "\n" in help_url):
        raise ValueError(f"help_url must be one line, got {help_url!r}")
    seconds = max(1, math.ceil(verdict.retry_after))
    text = (
        "4.7.1 Greylisted: mail from a new sender is delayed, please try again in "
        f"{seconds} second{'s' if seconds != 1 else ''}"
    )
    return 451, text if help_url is None else f"{text} (see {help_url})"


def normalise_sender(sender: str) -> str:
    """Lower-case ``sender`` and drop a ``+extension`` from its local part.

    Examples:
        >>> normalise_sender("Bob+List-4711@Example.org"), normalise_sender("")
        ('bob@example.org', '')
    """
    local, at, domain = sender.lower().rpartition("@")
    if not at:
        return sender.lower()  # the null sender of bounces, or an unqualified name
    base, plus, _ = local.partition("+")
    return f"{base}@{domain}" if plus and base else f"{local}@{domain}"


def _client_network(address: Address) -> bytes:
    """The client's /24 (IPv4) or /64 (IPv6) as a family tag and the prefix bytes."""
    client = client_address(address)
    return b"4" + client.packed[:3] if client.version == 4 else b"6" + client.packed[:8]


def _key(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little") >> (64 - _KEY_BITS)


def _recipient_entries(entries: Iterable[str]) -> frozenset[str]:
    """Normalise allowlist entries: ``a@b`` stays, ``b`` becomes ``@b``, ``a@`` stays."""
    normalised: set[str] = set()
    for position, entry in enumerate(entries):
        text = entry.strip().lower() if isinstance(entry, str) else ""
        if text in ("", "@") or text.count("@") > 1:
            raise ValueError(
                f"recipient_allowlist[{position}]: {entry!r} is not a recipient; write "
                "'postmaster@example.com', a domain as '@example.com' or 'example.com', "
                "or a local part at any domain as 'postmaster@'"
            )
        normalised.add(text if "@" in text else f"@{text}")
    return frozenset(normalised)


def _seconds(name: str, value: float) -> int:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return round(value * 1000)


class Greylist:
    """Postgrey's greylisting of (client network, sender, recipient) triplets, in memory.

    ``check`` is called at RCPT TO. Allow lists are consulted first: ``client_allowlist``
    by client address, ``recipient_allowlist`` by entries ``postmaster@example.com`` (that
    address), ``@example.com`` or ``example.com`` (every address at exactly that domain,
    not its subdomains) and ``postmaster@`` (that local part at any domain, as in
    postgrey's default list).

    ``cleanup`` forgets passed triplets ``max_age`` after their last pass, triplets that
    never passed ``retry_window`` after their first attempt, and client networks with no
    counted pass (or, once auto-allowlisted, no mail) for ``max_age``; the owner calls it
    periodically (hourly is plenty). A triplet past its age reads as forgotten even before
    ``cleanup`` runs.

    ``snapshot`` and ``restore`` keep the state across restarts. Times are stored as the
    clock reads them, so the clock must be wall time (the default ``time.time``) for a
    restored greylist to make sense; settings are not stored, they come with ``restore``.

    Warning:
        ``retry_window`` must cover the retry schedules of real senders: Postfix retries
        after 5 minutes at first and backs off to 67 minutes, other servers wait hours.
        Two days (postgrey's default) tolerates them all; shorter windows bounce mail.
    """

    __slots__ = (
        "_auto_allowlist_passes",
        "_client_allowlist",
        "_clients",
        "_clock",
        "_delay",
        "_max_age",
        "_pass_interval",
        "_recipient_allowlist",
        "_retry_window",
        "_triplets",
    )

    def __init__(
        self,
        delay: float = 300,
        retry_window: float = 2 * 86400,
        max_age: float = 35 * 86400,
        auto_allowlist_passes: int = 5,
        pass_interval: float = 3600,
        client_allowlist: AccessList | None = None,
        recipient_allowlist: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Times are whole milliseconds: packed into ints with the flag bits below.
        self._delay = _seconds("delay", delay)
        self._retry_window = _seconds("retry_window", retry_window)
        if self._retry_window < self._delay:
            raise ValueError(
                f"retry_window ({retry_window!r}) must not be shorter than delay ({delay!r}): "
                "no retry could ever pass"
            )
        self._max_age = _seconds("max_age", max_age)
        self._pass_interval = _seconds("pass_interval", pass_interval)
        if not (isinstance(auto_allowlist_passes, int) and 0 <= auto_allowlist_passes <= 255):
            raise ValueError(
                "auto_allowlist_passes must be a whole number from 0 (off) to 255, "
                f"got {auto_allowlist_passes!r}"
            )
        self._auto_allowlist_passes = auto_allowlist_passes
        self._client_allowlist = client_allowlist
        self._recipient_allowlist = _recipient_entries(recipient_allowlist)
        self._clock = clock
        # triplet key -> (milliseconds of first attempt, or of latest pass) << 1 | passed
        self._triplets: dict[int, int] = {}
        # client network key -> (ms of the latest counted pass, or once auto-allowlisted of its
        # latest mail) << 8 | passes counted
        self._clients: dict[int, int] = {}

    def check(self, client: Address, sender: str, recipient: str) -> GreylistVerdict:
        """The verdict for mail from ``client`` and ``sender`` to ``recipient``; records it."""
        address = client_address(client)
        if self._client_allowlist is not None and self._client_allowlist.contains(address):
            return _ALLOWLISTED_CLIENT
        recipient = recipient.lower()
        if self._recipient_allowed(recipient):
            return _ALLOWLISTED_RECIPIENT
        now = math.floor(self._clock() * 1000)
        network = _client_network(address)
        client_key = _key(network)
        if self._auto_allowlisted(client_key, now):
            return _AUTO_ALLOWLISTED
        triplet = b"\0".join(
            (
                network,
                normalise_sender(sender).encode("utf-8", "surrogatepass"),
                recipient.encode("utf-8", "surrogatepass"),
            )
        )
        key = _key(triplet)
        reason: GreylistReason = "new"
        state = self._triplets.get(key)
        if state is not None:
            since = now - (state >> 1)
            if state & _PASSED:
                if since <= self._max_age:
                    return self._pass(key, client_key, now)
            elif since < self._delay:
                return GreylistVerdict(False, "early", (self._delay - since) / 1000)
            elif since <= self._retry_window:
                return self._pass(key, client_key, now)
            else:
                reason = "expired-retry"
        self._triplets[key] = now << 1
        return GreylistVerdict(False, reason, self._delay / 1000)

    def cleanup(self) -> int:
        """Forget aged triplets and client networks; return how many triplets were removed."""
        now = math.floor(self._clock() * 1000)
        aged = [
            key
            for key, state in self._triplets.items()
            if now - (state >> 1) > (self._max_age if state & _PASSED else self._retry_window)
        ]
        for key in aged:
            del self._triplets[key]
        stale = [
            key
            for key, state in self._clients.items()
            if now - (state >> _COUNT_BITS) > self._max_age
        ]
        for key in stale:
            del self._clients[key]
        return len(aged)

    def __len__(self) -> int:
        """Triplets remembered (greylisted or passed)."""
        return len(self._triplets)

    @property
    def client_networks(self) -> int:
        """Client networks with passes counted towards the auto-allowlist."""
        return len(self._clients)

    def snapshot(self) -> bytes:
        """The state as bytes: a versioned header, then keys and packed times as int64 arrays."""
        parts = [_HEADER.pack(_MAGIC, _VERSION, len(self._triplets), len(self._clients))]
        for table in (self._triplets, self._clients):
            parts += (_little_endian(array("q", table)), _little_endian(array("q", table.values())))
        return b"".join(parts)

    @classmethod
    def restore(cls, data: bytes, **settings: Any) -> Greylist:
        """A greylist built with ``settings`` (as for the constructor) holding ``data``.

        Raises ValueError if ``data`` is not a snapshot of a version this code reads.
        """
        greylist = cls(**settings)
        greylist._load(data)
        return greylist

    def _pass(self, key: int, client_key: int, now: int) -> GreylistVerdict:
        self._triplets[key] = now << 1 | _PASSED
        if self._auto_allowlist_passes:
            state = self._clients.get(client_key)
            if state is None or now - (state >> _COUNT_BITS) > self._max_age:
                self._clients[client_key] = now << _COUNT_BITS | 1
            elif now - (state >> _COUNT_BITS) >= self._pass_interval:
                counted = min((state & _COUNT_MASK) + 1, _COUNT_MASK)
                self._clients[client_key] = now << _COUNT_BITS | counted
        return _PASSED_VERDICT

    def _auto_allowlisted(self, client_key: int, now: int) -> bool:
        if not self._auto_allowlist_passes:
            return False
        state = self._clients.get(client_key)
        if state is None or now - (state >> _COUNT_BITS) > self._max_age:
            return False
        counted = state & _COUNT_MASK
        if counted < self._auto_allowlist_passes:
            return False
        self._clients[client_key] = now << _COUNT_BITS | counted  # still active: keep it
        return True

    def _recipient_allowed(self, recipient: str) -> bool:
        if not self._recipient_allowlist:
            return False
        local, _, domain = recipient.rpartition("@")
        allowed = self._recipient_allowlist
        return recipient in allowed or f"@{domain}" in allowed or f"{local}@" in allowed

    def _load(self, data: bytes) -> None:
        view = memoryview(data)
        if len(view) < _HEADER.size:
            raise ValueError(f"not a greylist snapshot: {len(view)} bytes is shorter than a header")
        magic, version, triplets, clients = _HEADER.unpack_from(view)
        if magic != _MAGIC:
            raise ValueError(f"not a greylist snapshot: starts with {bytes(magic)!r}")
        if version != _VERSION:
            raise ValueError(f"greylist snapshot version {version} is not readable (want 1)")
        expected = _HEADER.size + 16 * (triplets + clients)
        if len(view) != expected:
            raise ValueError(
                f"greylist snapshot is {len(view)} bytes, its header says {expected}: truncated?"
            )
        offset = _HEADER.size
        tables: list[dict[int, int]] = []
        for count in (triplets, clients):
            keys = _int64s(view[offset : offset + 8 * count])
            values = _int64s(view[offset + 8 * count : offset + 16 * count])
            offset += 16 * count
            if count and not 0 <= min(keys) <= max(keys) < 1 << _KEY_BITS:
                raise ValueError("greylist snapshot holds keys out of range: corrupt")
            tables.append(dict(zip(keys, values, strict=True)))
        self._triplets, self._clients = tables


def _little_endian(values: array[int]) -> bytes:
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def _int64s(data: memoryview) -> array[int]:
    values = array("q")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values
