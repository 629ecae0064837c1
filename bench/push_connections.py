"""Live push on one process: server memory per WebSocket connection, and deliveries per second
when every connected subscriber is sent one message.

The server (a child process: the push listener and its hub, no journal) takes `--connections`
clients, each a subscriber of its own, from a uvloop client in this process that writes raw
handshakes and counts frames. Printed: the server's RSS growth per connection, then the time
for the hub to write one message to each of them (what a broadcast to a topic with that many
connected subscribers costs the push side) and until the client has read them all.

    .venv/bin/python bench/push_connections.py --connections 10000

Connections above the open-file limit (`ulimit -n`) need it raised: the client and the
server each hold one descriptor per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

HANDSHAKE = (
    "GET /v1/push/ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def serve() -> None:
    import gc

    from sluice.config import PushConfig
    from sluice.ingress.push.listener import PushListener
    from sluice.ingress.push.tokens import PushTokens
    from sluice.model import Message
    from sluice.process.listeners import bind_tcp
    from sluice.transports.push.hub import PushHub

    config = PushConfig(token_secret="s", max_connections=1_000_000)
    hub = PushHub(config)
    sock = bind_tcp("127.0.0.1:0")
    listener = PushListener(hub, PushTokens(b"s"), sock)
    await listener.start()
    print(listener.port, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(listener.run())
        while line := await reader.readline():
            count = int(line)
            gc.freeze()
            messages = [
                Message(i + 1, "acme", "live", f"s{i}", "breaking news: " + "x" * 60)
                for i in range(count)
            ]
            started = time.perf_counter()
            written = sum(hub.deliver(m, f"{m.id:013d}") for m in messages)
            elapsed = time.perf_counter() - started
            print(f"written {written} in {elapsed:.3f} s", flush=True)
        listener.stop()


class Client(asyncio.Protocol):
    def __init__(
        self, done: asyncio.Future[None], counter: list[int], everything: asyncio.Event, n: int
    ) -> None:
        self.done, self.counter, self.open = done, counter, False
        self.everything, self.n = everything, n

    def data_received(self, data: bytes) -> None:
        if not self.open:
            if b"\r\n\r\n" in data:
                self.open = True
                self.done.set_result(None)
            return
        self.counter[0] += data.count(b'"type":"message"')
        if self.counter[0] >= self.n:
            self.everything.set()


async def main(args: argparse.Namespace) -> None:
    from sluice.ingress.push.tokens import PushTokens

    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    port = int(await server.stdout.readline())
    tokens = PushTokens(b"s")
    loop = asyncio.get_running_loop()
    counter = [0]
    everything = asyncio.Event()
    before = rss_kb(server.pid)
    clients = []
    started = time.perf_counter()
    for batch in range(0, args.connections, 500):
        waits = []
        for i in range(batch, min(batch + 500, args.connections)):
            done: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda d=done: Client(d, counter, everything, args.connections), "127.0.0.1", port
            )
            token = tokens.mint("acme", f"s{i}", (), ttl_ms=3_600_000)
            transport.write(HANDSHAKE.format(token=token).encode())
            clients.append(transport)
            waits.append(done)
        await asyncio.gather(*waits)
    connect_s = time.perf_counter() - started
    await asyncio.sleep(1)
    after = rss_kb(server.pid)
    print(f"connections: {args.connections} in {connect_s:.1f} s")
    print(f"server RSS: {before / 1024:.1f} MB -> {after / 1024:.1f} MB, "
          f"{(after - before) * 1024 / args.connections / 1024:.2f} KB per connection")  # fmt: skip
    started = time.perf_counter()
    server.stdin.write(f"{args.connections}\n".encode())
    line = (await server.stdout.readline()).decode().strip()
    await everything.wait()
    total = time.perf_counter() - started
    rest = line.partition(" in ")[2]
    seconds = float(rest.split()[0])
    print(f"hub wrote one message to each: {line} = {args.connections / seconds:,.0f} deliveries/s")
    print(f"all read by the clients in {total:.3f} s = {args.connections / total:,.0f}/s")
    server.stdin.close()
    for transport in clients:
        transport.close()
    await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.serve:
        uvloop.run(serve())
    else:
        uvloop.run(main(args))
