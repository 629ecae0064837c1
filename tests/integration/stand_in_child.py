"""A stand-in for `sluice serve --child`, to test the supervisor without a database.

`python stand_in_child.py MODE [SPEC]`, MODE being one of:
- serve: answer HTTP on the inherited socket with "<slot> <node> <pid>"; exit 0 on SIGTERM;
- fail: exit 3 at once, like a child given a bad database URL;
- stubborn: like serve, but ignore SIGTERM;
- orphan: call die_with_parent, print "armed <pid>", wait for SIGTERM, print "stopped by
  SIGTERM".
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sluice.process.listeners import Listeners
from sluice.process.supervisor import ChildSpec, die_with_parent


async def serve(spec: ChildSpec, *, stubborn: bool) -> None:
    assert die_with_parent(spec.parent)
    listeners = Listeners.adopt(spec.http_fd, spec.smtp_fd)
    body = f"{spec.slot} {spec.node} {os.getpid()}".encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))  # fmt: skip
        await writer.drain()
        writer.close()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, (lambda: None) if stubborn else stop.set)
    server = await asyncio.start_server(answer, sock=listeners.http)
    print(f"stand-in child {spec.slot} ready", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


async def orphan() -> None:
    assert die_with_parent(os.getppid())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"armed {os.getpid()}", flush=True)
    await stop.wait()
    print("stopped by SIGTERM", flush=True)


def main() -> int:
    mode = sys.argv[1]
    if mode == "orphan":
        asyncio.run(orphan())
        return 0
    spec = ChildSpec.decode(sys.argv[2])
    if mode == "fail":
        print(f"stand-in child {spec.slot}: failing at start", file=sys.stderr)
        return 3
    asyncio.run(serve(spec, stubborn=mode == "stubborn"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
