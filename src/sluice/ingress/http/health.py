"""Health and readiness on a listener of their own, served from a thread with its own event loop.

On the main port, /healthz and /readyz are answered by the gate as soon as their headers are
in, which is prompt while the adaptive limit holds the loop's lag near its target. But the
loop can still be late (a refusal flood far above what it can answer, a long callback), and
a balancer that sees a probe time out ejects the node exactly when it is busy. With
`server.health_listen` set, probes are also answered here: a thread that does nothing else,
so an answer waits only for the GIL (handed over every `server.gil_switch_interval_ms`), not
for the main loop.

The answers are the gate's: /healthz says the process is up; /readyz says it is serving and,
with `admission.unready_while_shedding`, not shedding load. Anything else is a 404. Every
connection is closed after its answer, and one that has not sent its headers within
`HEADER_SECONDS` (or sends more than `MAX_HEADER_BYTES`) is closed unanswered.

Examples:
    health = HealthListener(bind_tcp("127.0.0.1:8081"), gate)
    health.start()
    ...
    health.stop()
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from email.utils import formatdate

from sluice.ingress.http.gate import EdgeGate, FastAnswer, error_answer
from sluice.ingress.http.request_id import RequestIds

log = logging.getLogger("sluice.http")

#: A probe's request line and headers must fit in this (balancers send a few hundred bytes).
MAX_HEADER_BYTES = 8 * 1024
#: Seconds a probe connection may take to send its headers.
HEADER_SECONDS = 1.0
#: How often the thread looks whether it should stop, between probes.
ACCEPT_POLL_SECONDS = 0.2

_NOT_FOUND = error_answer(404, "not_found", "this port serves only /healthz and /readyz")


def probe_answer(gate: EdgeGate, head: bytes) -> FastAnswer:
    """The answer to a probe whose request line and headers are `head`."""
    line = head.split(b"\r\n", 1)[0]
    method, _, rest = line.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    answer = gate.probe(target) if method == b"GET" else None
    return _NOT_FOUND if answer is None else answer


class HealthListener:
    """Serves probes on `sock` from a thread of its own until `stop`.

    The thread blocks in accept and serves one connection at a time with plain socket calls:
    a handful of GIL hand-overs per probe, where an event loop in the thread took dozens (its
    probes' p99 under a refusal flood was 80-90 ms, against 22-35 ms now). A probe that
    dawdles holds the others back by at most `HEADER_SECONDS`: this port is for balancers."""

    def __init__(self, sock: socket.socket, gate: EdgeGate) -> None:
        self._sock = sock
        self._gate = gate
        self._request_ids = RequestIds()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._sock.listen(1024)
        self._sock.settimeout(ACCEPT_POLL_SECONDS)
        self._thread = threading.Thread(target=self._run, name="health-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (within `ACCEPT_POLL_SECONDS`)."""
        if self._thread is None:
            return
        self._stopping = True
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping:
                    return
                log.warning("health listener: cannot accept: %s", exc)
                time.sleep(ACCEPT_POLL_SECONDS)
                continue
            # OSError: the prober went away, or took too long; nobody to answer.
            with conn, contextlib.suppress(OSError):
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + HEADER_SECONDS
        head = b""
        while b"\r\n\r\n" not in head:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # a whole-request deadline, not one per read: no byte-a-second holds
            conn.settimeout(remaining)
            chunk = conn.recv(4096)
            if not chunk or len(head) + len(chunk) > MAX_HEADER_BYTES:
                return
            head += chunk
        date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        answer = probe_answer(self._gate, head)
        request_id = self._request_ids.draw()
        conn.sendall(answer.render(date, keep_alive=False, request_id=request_id))
