"""aiosmtpd's per-connection method look-ups, cached per class: installed when the front door
starts (never at import), once, and answering what `inspect` and `dir` would."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys

import aiosmtpd.smtp

from sluice.ingress.smtp.aiosmtpd_lookups import install_lookup_caches


class Handler:
    async def handle_DATA(self, *args: object) -> str:
        return "250 OK"

    async def auth_CUSTOM(self, *args: object) -> None:
        return None


def test_importing_the_front_door_changes_nothing_in_aiosmtpd() -> None:
    check = (
        "import builtins, inspect, aiosmtpd.smtp, sluice.ingress.smtp.door\n"
        "assert aiosmtpd.smtp.inspect is inspect\n"
        "assert 'dir' not in vars(aiosmtpd.smtp)\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_the_caches_answer_what_inspect_and_dir_would_and_install_once() -> None:
    install_lookup_caches()
    namespace = vars(aiosmtpd.smtp)
    installed = namespace["inspect"], namespace["dir"]
    install_lookup_caches()
    assert namespace["inspect"] is installed[0] and namespace["dir"] is installed[1]
    handler = Handler()
    members = namespace["inspect"].getmembers(handler)
    assert members == [m for m in inspect.getmembers(handler) if m[0].startswith("auth_")]
    assert namespace["inspect"].getmembers(handler) == members  # from the cache
    assert namespace["dir"](handler) == dir(handler)
    assert namespace["inspect"].signature is inspect.signature  # the rest is inspect's
    assert logging.getLogger("mail.log").level == logging.WARNING


async def test_a_session_finds_its_methods_through_the_caches() -> None:
    install_lookup_caches()
    session = aiosmtpd.smtp.SMTP(Handler(), auth_require_tls=False)
    assert "CUSTOM" in session._auth_methods
    assert "DATA" in session._handle_hooks
    assert "EHLO" in session._smtp_methods
