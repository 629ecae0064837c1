"""Helpers for integration tests: a real gateway on a real port, talking to real sinks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from sluice.config import from_dict, hash_api_key
from sluice.process.gateway import SluiceGateway

KEY = "test-key-acme"
OTHER_KEY = "test-key-other"


def gateway_config(
    store: Path | dict[str, Any], channels: dict[str, Any], /, **sections: Any
) -> dict[str, Any]:
    """A gateway's configuration; `store` is a directory for a SQLite journal, or the
    `[journal]` table itself (the `journal_section` fixture: SQLite or PostgreSQL); each of
    `sections` updates its table."""
    journal = (
        {"path": str(store / "journal.db"), "synchronous": "normal"}
        if isinstance(store, Path)
        else store
    )
    raw: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace_seconds": 5},
        "journal": dict(journal),
        "channels": channels,
        "tenants": {
            "acme": {"api_keys": [hash_api_key(KEY)]},
            "other": {"api_keys": [hash_api_key(OTHER_KEY)]},
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def webhook_channel(url: str, **options: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "webhook", "webhook": {"url": url}}
    for key, value in options.items():
        if key in ("secret", "timeout_seconds"):
            channel["webhook"][key] = value
        else:
            channel[key] = value
    return channel


class Running:
    def __init__(self, gateway: SluiceGateway, client: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.client = client

    async def post(
        self, messages: list[dict[str, Any]], key: str = KEY, headers: dict[str, str] | None = None
    ) -> list[str]:
        async with self.client.post(
            "/v1/messages",
            data=msgspec.json.encode({"messages": messages}),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        ) as resp:
            body = await resp.json()
            assert resp.status == 202, body
            return list(body["ids"])

    async def message(self, message_id: str, key: str = KEY) -> dict[str, Any]:
        async with self.client.get(
            f"/v1/messages/{message_id}", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return dict(body)

    async def channels(self) -> dict[str, dict[str, Any]]:
        async with self.client.get(
            "/v1/channels", headers={"Authorization": f"Bearer {KEY}"}
        ) as resp:
            body = await resp.json()
            return {c["name"]: c for c in body["channels"]}


@contextlib.asynccontextmanager
async def running_gateway(raw_config: dict[str, Any]) -> AsyncIterator[Running]:
    gateway = SluiceGateway(from_dict(raw_config))
    task = asyncio.create_task(gateway.run())
    started = asyncio.create_task(gateway.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
        raise AssertionError("gateway stopped before it started")
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.port}") as client:
            yield Running(gateway, client)
    finally:
        gateway.request_stop()
        await task


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 20.0, what: str = "condition"
) -> None:
    """Wait until `check` holds, looking every 10 ms (for states only visible by asking)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


class ServeProcess:
    """`sluice serve` as a real subprocess, for crash and signal tests."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sluice.cli",
                "serve",
                "--config",
                str(self.config_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                assert self.proc.returncode is None, self.log_path.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("sluice serve did not become ready:\n" + self.log_path.read_text())

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self, within: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(within):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("sluice serve ignored SIGTERM") from None

    async def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def post_batch(
    session: aiohttp.ClientSession, port: int, start: int, count: int, key: str
) -> list[str] | None:
    """One batch with an idempotency key; its ids if acknowledged (202), None otherwise."""
    batch = [
        {"channel": "web", "to": f"+1555{i:06d}", "body": f"m{i}"}
        for i in range(start, start + count)
    ]
    try:
        async with session.post(
            f"http://127.0.0.1:{port}/v1/messages",
            data=msgspec.json.encode({"messages": batch}),
            headers={
                "Authorization": f"Bearer {KEY}",
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            },
        ) as resp:
            if resp.status != 202:
                return None
            ids: list[str] = (await resp.json())["ids"]
            return ids
    except (TimeoutError, aiohttp.ClientError):
        return None
