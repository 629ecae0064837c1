"""How connections spread over processes sharing a port: one inherited socket (what the
supervisor does) against SO_REUSEPORT in each process.

    .venv/bin/python bench/socket_sharing.py --children 2

For each mode, starts `--children` processes serving a bare ASGI app on uvicorn (uvloop,
httptools) that answers its pid, then prints how many requests each child answered for 400
sequential new connections, for 2,000 new connections 64 at a time and for 64 keep-alive
connections opened at once; requests/s from wrk (64 connections, 5 s) when wrk is installed;
and how many requests failed while one child was killed with SIGKILL under load (32 clients
opening a connection per request for 3 s, the kill after 1 s). The figures are in
docs/architecture.md ("Many processes").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import aiohttp

MODES = ("inherit", "reuseport")


def child(mode: str, where: str) -> None:
    """One serving process: on the inherited descriptor `where`, or binding port `where`."""
    import uvicorn
    import uvloop

    body = str(os.getpid()).encode()

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        await send(  # type: ignore[operator]
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-length", str(len(body)).encode())]}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    if mode == "inherit":
        sock = socket.socket(fileno=int(where))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(where)))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", http="httptools")
    server = uvicorn.Server(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: setattr(server, "should_exit", True))
        await server.serve(sockets=[sock])

    uvloop.run(main())


def start_children(mode: str, n: int, port: int) -> tuple[list[subprocess.Popen[bytes]], object]:
    me = [sys.executable, __file__, "--child", mode]
    if mode == "inherit":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        fd = sock.fileno()
        procs = [subprocess.Popen([*me, str(fd)], pass_fds=[fd]) for _ in range(n)]
        return procs, sock
    return [subprocess.Popen([*me, str(port)]) for _ in range(n)], None


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/"):
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def new_connections(port: int, concurrency: int, total: int) -> list[int]:
    answered: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with gate, session.get(f"http://127.0.0.1:{port}/") as resp:
                answered[await resp.text()] += 1

        await asyncio.gather(*(one() for _ in range(total)))
    return sorted(answered.values())


async def keep_alive(port: int, connections: int) -> list[int]:
    answered: collections.Counter[str] = collections.Counter()
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(connections)
    ]

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.get(f"http://127.0.0.1:{port}/") as resp:
            answered[await resp.text()] += 1

    await asyncio.gather(*(one(s) for s in sessions))
    for session in sessions:
        await session.close()
    return sorted(answered.values())


async def failures_while_one_dies(port: int, victim: subprocess.Popen[bytes]) -> tuple[int, int]:
    ok = failed = 0
    stop = time.monotonic() + 3

    async def client() -> None:
        nonlocal ok, failed
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < stop:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/") as resp:
                        await resp.read()
                        ok += 1
                except aiohttp.ClientError:
                    failed += 1

    async def kill() -> None:
        await asyncio.sleep(1)
        victim.kill()

    await asyncio.gather(kill(), *(client() for _ in range(32)))
    return ok, failed


def wrk(port: int) -> str:
    if shutil.which("wrk") is None:
        return "wrk not installed"
    out = subprocess.run(
        ["wrk", "-t2", "-c64", "-d5s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next((line.split()[-1] for line in out.splitlines() if "Requests/sec" in line), "?")


def measure(mode: str, n: int, port: int) -> None:
    procs, held = start_children(mode, n, port)
    try:
        asyncio.run(wait_ready(port))
        time.sleep(0.5)  # every child listening
        print(
            f"{mode}: 400 sequential new connections: {asyncio.run(new_connections(port, 1, 400))}"
        )
        print(f"{mode}: 2,000 new connections, 64 at a time: "
              f"{asyncio.run(new_connections(port, 64, 2000))}")  # fmt: skip
        print(f"{mode}: 64 keep-alive connections: {asyncio.run(keep_alive(port, 64))}")
        print(f"{mode}: wrk requests/s: {wrk(port)}")
        ok, failed = asyncio.run(failures_while_one_dies(port, procs[0]))
        print(f"{mode}: one child killed under load: {ok} answered, {failed} failed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
        if isinstance(held, socket.socket):
            held.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--port", type=int, default=18123)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for i, mode in enumerate(MODES):
        measure(mode, args.children, args.port + i)


if __name__ == "__main__":
    main()
