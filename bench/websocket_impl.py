"""Which WebSocket implementation a push server should stand on: the cost per pushed message
and the memory per connection of each sans-IO core on an asyncio Protocol of our own.

    .venv/bin/pip install websockets wsproto      # not dependencies of Sluice (yet)
    .venv/bin/python bench/websocket_impl.py --connections 200 --messages 200
    .venv/bin/python bench/websocket_impl.py --idle 10000

Candidates: `websockets`' sans-IO `ServerProtocol` and `wsproto`'s `WSConnection`, each driven
by the same uvloop `asyncio.Protocol` (accept the handshake, push, count the acknowledgements),
in a server process of its own. The clients are `websockets`' asyncio client in another
process (its cost is not counted).

1. Push: every connection is sent `--messages` text frames of ~200 bytes, at most `--window`
   unacknowledged; the client answers each with a small text frame (an acknowledgement, as a
   push client will). Measured: messages/s, and the server's CPU (user + system, from /proc)
   per message, which is what bounds a push process (acknowledgements decoded included).
2. Idle memory (`--idle N`): N connections opened and held; the server's RSS before and after,
   per connection.

The two runs alternate (--rounds) so that the machine's drift falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_seconds, free_port

PAYLOAD = '{"id":"0726WZ4996C00","body":"' + "x" * 160 + '"}'


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------ the servers


def serve(impl: str, port: int, messages: int, window: int) -> None:
    import uvloop

    uvloop.install()

    class Base(asyncio.Protocol):
        def __init__(self) -> None:
            self.transport: asyncio.Transport | None = None
            self.sent = 0
            self.acked = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def pump(self) -> None:
            while self.sent < messages and self.sent - self.acked < window:
                self.push(PAYLOAD)
                self.sent += 1

        def push(self, text: str) -> None:
            raise NotImplementedError

    class WithWebsockets(Base):
        def __init__(self) -> None:
            super().__init__()
            from websockets.server import ServerProtocol

            self.protocol = ServerProtocol()

        def data_received(self, data: bytes) -> None:
            from websockets.frames import Frame, Opcode
            from websockets.http11 import Request

            p = self.protocol
            p.receive_data(data)
            for event in p.events_received():
                if isinstance(event, Request):
                    p.send_response(p.accept(event))
                    self.flush()
                    self.pump()
                elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self.acked += 1
            self.pump()
            self.flush()

        def push(self, text: str) -> None:
            self.protocol.send_text(text.encode())

        def flush(self) -> None:
            assert self.transport is not None
            out = self.protocol.data_to_send()
            if out:
                self.transport.write(b"".join(out))

    class WithWsproto(Base):
        def __init__(self) -> None:
            super().__init__()
            from wsproto import ConnectionType, WSConnection

            self.ws = WSConnection(ConnectionType.SERVER)
            self.out: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            from wsproto.events import AcceptConnection, Request, TextMessage

            ws = self.ws
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    self.out.append(ws.send(AcceptConnection()))
                    self.pump()
                elif isinstance(event, TextMessage):
                    self.acked += 1
            self.pump()
            assert self.transport is not None
            if self.out:
                self.transport.write(b"".join(self.out))
                self.out.clear()

        def push(self, text: str) -> None:
            from wsproto.events import TextMessage

            self.out.append(self.ws.send(TextMessage(data=text)))

    protocol = {"websockets": WithWebsockets, "wsproto": WithWsproto}[impl]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            protocol, "127.0.0.1", port, backlog=4096
        )
        print("ready", flush=True)
        async with server:
            await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------ the clients


def clients(port: int, connections: int, messages: int, hold: bool) -> None:
    import uvloop
    from websockets.asyncio.client import connect

    uvloop.install()

    async def one(ready: asyncio.Event) -> None:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_queue=None) as ws:
            if hold:
                await ready.wait()
                return
            for _ in range(messages):
                await ws.recv()
                await ws.send("ack")

    async def main() -> None:
        ready = asyncio.Event()
        started = time.perf_counter()
        tasks = []
        for i in range(connections):
            tasks.append(asyncio.create_task(one(ready)))
            if i % 200 == 199:
                await asyncio.sleep(0.05)  # not the whole backlog at once
        if hold:
            await asyncio.sleep(2 + connections / 2000)
            print(f"held {connections}", flush=True)
            sys.stdin.readline()
            ready.set()
        await asyncio.gather(*tasks)
        print(f"done {time.perf_counter() - started:.3f}", flush=True)

    asyncio.run(main())


# ------------------------------------------------------------------ the driver


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def push_round(impl: str, connections: int, messages: int, window: int) -> tuple[float, float]:
    port = free_port()
    server = start("--serve", impl, "--port", str(port), "--messages", str(messages),
                   "--window", str(window))  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        cpu0 = cpu_seconds(server.pid)
        client = start("--client", "--port", str(port), "--connections", str(connections),
                       "--messages", str(messages))  # fmt: skip
        assert client.stdout is not None
        line = client.stdout.readline().split()
        client.wait()
        seconds = float(line[1])
        total = connections * messages
        return total / seconds, (cpu_seconds(server.pid) - cpu0) / total * 1e6
    finally:
        server.kill()
        server.wait()


def idle_round(impl: str, connections: int) -> float:
    port = free_port()
    server = start("--serve", impl, "--port", str(port), "--messages", "0", "--window", "1")
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        before = rss_mb(server.pid)
        client = start("--client", "--port", str(port), "--connections", str(connections),
                       "--messages", "0", "--hold")  # fmt: skip
        assert client.stdout is not None and client.stdin is not None
        client.stdout.readline()  # held N
        after = rss_mb(server.pid)
        client.stdin.write("\n")
        client.stdin.flush()
        client.wait()
        return (after - before) * 1024 / connections
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["websockets", "wsproto"])
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--idle", type=int, default=0, help="connections held for the RSS")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.messages, args.window)
        return
    if args.client:
        clients(args.port, args.connections, args.messages, args.hold)
        return
    for round_ in range(args.rounds):
        for impl in ("websockets", "wsproto"):
            if args.idle:
                per = idle_round(impl, args.idle)
                print(f"round {round_ + 1} {impl:10} {args.idle:,} idle connections: "
                      f"{per:.1f} KB of server RSS each")  # fmt: skip
            else:
                rate, cost = push_round(impl, args.connections, args.messages, args.window)
                print(f"round {round_ + 1} {impl:10} {args.connections} x {args.messages} "
                      f"pushed and acknowledged: {rate:,.0f} msgs/s, server CPU "
                      f"{cost:.1f} us a message")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
