"""What a gateway process runs for each `server.role`: a table, read once at start.

    role     takes messages   delivers
    all      yes              yes
    api      yes              no
    worker   no               yes

Taking messages is the HTTP message API and the SMTP front door; delivering is the channel
runners with their transports, the completion stage, the callback sender and the journal
upkeep (lease heartbeat, sweeps).

Every process serves `/healthz`, `/readyz` and `/metrics` on `server.listen`; a worker serves
nothing else there. Split roles share the PostgreSQL journal: an api process's inserts wake the
workers through it (`Journal.watch_due`).

Examples:
    >>> ROLES["worker"]
    Role(takes_messages=False, delivers=True)
"""

from __future__ import annotations

from typing import NamedTuple

from sluice.config import Config


class Role(NamedTuple):
    #: The HTTP message API (`/v1/…`, `/openapi.json`) and the SMTP front door.
    takes_messages: bool
    #: Channel runners with their transports, the completion stage, the callback sender, and
    #: the journal upkeep (lease heartbeat, sweeps of dead owners' leases and of expiries).
    delivers: bool


ROLES: dict[str, Role] = {
    "all": Role(takes_messages=True, delivers=True),
    "api": Role(takes_messages=True, delivers=False),
    "worker": Role(takes_messages=False, delivers=True),
}


def role_of(config: Config) -> Role:
    return ROLES[config.server.role]


def serves_smtp(config: Config) -> bool:
    """True when this process runs the SMTP front door: it is configured and the role takes
    messages."""
    return config.smtp is not None and role_of(config).takes_messages
