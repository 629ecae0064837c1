"""The parts of a gateway process: each starts, runs until stopped, and closes (the HTTP
server, the Redis sharing, the SMTP front door with its saved state)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from sluice.config import Config, from_dict, hash_api_key
from sluice.ingress.smtp.door import SmtpFrontDoor
from sluice.process.front_door import CLIENT_MEMORY_STATE, GREYLIST_STATE, FrontDoorPart
from sluice.process.listeners import bind_tcp
from sluice.process.parts import HttpServerPart, SharingPart
from sluice.screening.client_memory import ClientMemory
from sluice.sharing.build import Sharing


class StateStore:
    """The two journal calls the front door's part makes, on a dict."""

    def __init__(self, saved: dict[str, bytes] | None = None) -> None:
        self.saved = dict(saved or {})

    async def load_state(self, name: str) -> bytes | None:
        return self.saved.get(name)

    async def save_state(self, name: str, data: bytes) -> None:
        self.saved[name] = data


def smtp_config(**greylist: Any) -> Config:
    return from_dict(
        {
            "channels": {"sms": {"type": "webhook", "webhook": {"url": "http://127.0.0.1:9/"}}},
            "tenants": {"acme": {"api_keys": [hash_api_key("k")]}},
            "smtp": {
                "listen": "127.0.0.1:0",
                "tenant": "acme",
                "sms_domain": "sms.example.test",
                "sms_channel": "sms",
                "greylist": greylist,
            },
        }
    )


async def test_the_http_server_serves_until_stopped() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"up"})

    sock = bind_tcp("127.0.0.1:0")
    port = sock.getsockname()[1]
    part = HttpServerPart(app, sock, Config())
    try:
        await part.start()
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(part.run())
            async with aiohttp.ClientSession() as session:
                for _ in range(200):  # until uvicorn listens on the socket
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/") as resp:
                            assert (resp.status, await resp.read()) == (200, b"up")
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the server never answered")
            part.stop()
            await asyncio.wait_for(running, 10)
        await part.close()
    finally:
        sock.close()


async def test_sharing_without_redis_runs_until_stopped() -> None:
    part = SharingPart(Sharing(Config()))
    await part.start()
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(part.run())
        await asyncio.sleep(0.01)
        assert not running.done()  # Sharing.run returns at once without Redis; the part waits
        part.stop()
        await asyncio.wait_for(running, 5)
    await part.close()


async def test_the_front_door_restores_its_state_and_saves_it_after_stopping() -> None:
    config = smtp_config(enabled=True)
    assert config.smtp is not None
    remembered = ClientMemory()
    remembered.seen("192.0.2.7", 1_000)
    store = StateStore({CLIENT_MEMORY_STATE: remembered.snapshot()})
    door = SmtpFrontDoor(config, None)  # type: ignore[arg-type]  # no session is opened
    part = FrontDoorPart(door, store, config.smtp.screening)  # type: ignore[arg-type]
    await part.start()
    assert door.memory.get("192.0.2.7") is not None
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(part.run())
        await asyncio.wait_for(door.listening.wait(), 5)
        door.memory.seen("198.51.100.1", int(door.now()))
        part.stop()
        await asyncio.wait_for(running, 5)
    await part.close()
    saved = ClientMemory.restore(store.saved[CLIENT_MEMORY_STATE])
    assert saved.get("198.51.100.1") is not None
    assert GREYLIST_STATE in store.saved  # the greylist is enabled: saved too


async def test_an_unreadable_saved_state_starts_empty(caplog: pytest.LogCaptureFixture) -> None:
    config = smtp_config()
    assert config.smtp is not None
    door = SmtpFrontDoor(config, None)  # type: ignore[arg-type]
    store = StateStore({CLIENT_MEMORY_STATE: b"\xffnot a snapshot"})
    part = FrontDoorPart(door, store, config.smtp.screening)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="sluice"):
        await part.start()
    assert "smtp.client_memory: the saved state is unreadable" in caplog.text
    assert len(door.memory) == 0
