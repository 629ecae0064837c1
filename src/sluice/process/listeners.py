"""Listening sockets: bound by a gateway for itself, or once by the supervisor for all of its
children, which inherit them.

Several processes accepting on one inherited socket share its accept queue: the kernel hands
each connection to whichever process accepts first (an idle one, usually), and a process that
dies loses none of the connections waiting in the queue, because the socket outlives it. Why
this and not SO_REUSEPORT: docs/architecture.md, "Many processes".

Examples:
    listeners = bind_listeners(config)        # in the supervisor
    fds = listeners.fds()                     # passed to each child (pass_fds)
    Listeners.adopt(http_fd, smtp_fd)         # in a child
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from sluice.config import Config
from sluice.process.roles import serves_smtp


def bind_tcp(address: str) -> socket.socket:
    """A TCP socket bound to `address` ("host:port", "[v6]:port"), not yet listening: whoever
    serves on it calls listen (uvicorn, asyncio's create_server)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says it is TCP, and without it a response written in two parts waits for a
    # delayed ACK (~40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class Listeners(NamedTuple):
    """The listening sockets of a gateway process: HTTP always, SMTP when it runs the front
    door, health probes when `server.health_listen` is set, /metrics when
    `server.admin_listen` is."""

    http: socket.socket
    smtp: socket.socket | None = None
    health: socket.socket | None = None
    admin: socket.socket | None = None

    @classmethod
    def adopt(
        cls,
        http_fd: int,
        smtp_fd: int | None,
        health_fd: int | None = None,
        admin_fd: int | None = None,
    ) -> Listeners:
        """The sockets a child inherited from its supervisor, by file descriptor."""
        return cls(
            socket.socket(fileno=http_fd),
            socket.socket(fileno=smtp_fd) if smtp_fd is not None else None,
            socket.socket(fileno=health_fd) if health_fd is not None else None,
            socket.socket(fileno=admin_fd) if admin_fd is not None else None,
        )

    def fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self if s is not None)

    def close(self) -> None:
        for sock in self:
            if sock is not None:
                sock.close()


def bind_listeners(config: Config) -> Listeners:
    """Bind every port a gateway process of this configuration serves on."""
    bound: list[socket.socket] = []
    try:
        http = bind_tcp(config.server.listen)
        bound.append(http)
        smtp = None
        if config.smtp is not None and serves_smtp(config):
            smtp = bind_tcp(config.smtp.listen)
            bound.append(smtp)
        health = admin = None
        if config.server.health_listen is not None:
            health = bind_tcp(config.server.health_listen)
            bound.append(health)
        if config.server.admin_listen is not None:
            admin = bind_tcp(config.server.admin_listen)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return Listeners(http, smtp, health, admin)
