"""STARTTLS certificates for a simulator: loaded from PEM files, or made on the spot.

Warning:
    A self-signed certificate is trusted by nobody: clients must turn verification off or
    trust its PEM. It is made with the ``openssl`` command line tool, which must be on PATH.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import ssl
import tempfile
from pathlib import Path

#: Days the self-signed certificate is valid: long enough for a demo, short enough to be
#: useless if it leaks.
SELF_SIGNED_DAYS = 2
#: Seconds the ``openssl`` command gets to make a key and a certificate.
OPENSSL_TIMEOUT_SECONDS = 30.0


def load_tls(cert: str, key: str) -> tuple[ssl.SSLContext, str]:
    """A server context for STARTTLS from PEM files, and the certificate's PEM."""
    # Purpose.CLIENT_AUTH: a server-side context that asks clients for no certificate, which
    # aiosmtpd expects (it warns about anything stricter).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, Path(cert).read_text()


async def self_signed_context(hostname: str, host: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a fresh key and self-signed certificate, and that PEM."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "self_signed: the openssl command line tool is not on PATH; install it or give "
            "tls_cert and tls_key"
        )
    names = [f"DNS:{hostname}", "DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    try:
        ipaddress.ip_address(host)
        if host not in ("127.0.0.1", "::1", "0.0.0.0", "::"):
            names.append(f"IP:{host}")
    except ValueError:
        names.append(f"DNS:{host}")
    with tempfile.TemporaryDirectory(prefix="sluice-smtp-sink-") as workdir:
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        process = await asyncio.create_subprocess_exec(
            openssl, "req", "-x509", "-batch", "-nodes",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", key, "-out", cert, "-days", str(SELF_SIGNED_DAYS),
            "-subj", f"/CN={hostname}", "-addext", f"subjectAltName={','.join(names)}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(OPENSSL_TIMEOUT_SECONDS):
                _, stderr = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"self_signed: openssl took more than {OPENSSL_TIMEOUT_SECONDS:g} s"
            ) from None
        if process.returncode != 0:
            raise RuntimeError(
                f"self_signed: openssl failed (exit {process.returncode}): "
                f"{stderr.decode(errors='replace').strip()}"
            )
        return await asyncio.to_thread(load_tls, cert, key)
