"""aiosmtpd's per-connection look-ups of its own methods, answered once per class.

aiosmtpd's `SMTP.__init__` searches the session and its handler for their `auth_*`, `smtp_*`
and `handle_*` methods on every connection, with `inspect.getmembers` and `dir`. The answers
depend only on the classes, so the front door gives `aiosmtpd.smtp` a per-class cache of both
when it starts (`install_lookup_caches`), and quietens the INFO lines aiosmtpd logs for every
connection (the front door logs its own vocabulary).

What this relies on, in aiosmtpd 1.4 (pyproject.toml pins aiosmtpd to the 1.4 series, the one
the tests run): `aiosmtpd.smtp` looks the methods up through its module-level names `inspect`
(`inspect.getmembers(obj)` for `auth_*`; `inspect.signature` for the EHLO hook) and `dir`
(the builtin, for `smtp_*` and `handle_*`), and logs to the logger "mail.log". A later aiosmtpd
that looks them up otherwise loses only the speed: the caches answer what `inspect` and `dir`
would.

Examples:
    install_lookup_caches()   # idempotent; SmtpFrontDoor.run calls it before listening
"""

from __future__ import annotations

import inspect
import logging

import aiosmtpd.smtp as aiosmtpd_smtp


class _AuthMembers:
    """What aiosmtpd's `SMTP.__init__` asks `inspect` for, answered from a per-class cache.

    aiosmtpd calls `inspect.getmembers` on the session and on its handler for every
    connection, only to find the `auth_*` methods; that was ~35 % of the gateway's CPU per
    connection on the cached-pass path (py-spy, `bench/smtp_screening.py`). The answer depends
    only on the classes, so the names are found once per class and bound per instance.
    """

    def __init__(self) -> None:
        self._names: dict[type, list[str]] = {}

    def getmembers(self, obj: object) -> list[tuple[str, object]]:
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = [n for n in dir(type(obj)) if n.startswith("auth_")]
        return [(name, getattr(obj, name)) for name in names]

    def __getattr__(self, name: str) -> object:
        return getattr(inspect, name)


class _ClassDir:
    """`dir` for aiosmtpd's per-connection look-ups of `smtp_*` and `handle_*` methods, which
    depend only on the class (another ~15 % of the CPU per connection)."""

    def __init__(self) -> None:
        self._names: dict[type, list[str]] = {}

    def __call__(self, obj: object) -> list[str]:
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = dir(type(obj))
        return names


def install_lookup_caches() -> None:
    """Give `aiosmtpd.smtp` the per-class caches and quieten its per-connection log lines;
    a second call changes nothing."""
    # Names set in the module's namespace shadow, for aiosmtpd.smtp alone, the `inspect`
    # module it imported and the builtin `dir`.
    namespace = vars(aiosmtpd_smtp)
    if isinstance(namespace.get("inspect"), _AuthMembers):
        return
    namespace["inspect"] = _AuthMembers()
    namespace["dir"] = _ClassDir()
    logging.getLogger("mail.log").setLevel(logging.WARNING)
