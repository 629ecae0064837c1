"""A real browser on live push: headless Chromium (the distribution's, driven by Playwright)
loads the example page from the push listener, receives and acknowledges pushes, loses its
connection when the gateway restarts on the same journal and port, reconnects by itself and
gets exactly what it missed."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from harness import KEY, eventually, gateway_config, running_gateway
from playwright.async_api import Page, async_playwright

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _received(page: Page) -> list[str]:
    return list(await page.evaluate("window.received"))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the distribution's chromium")
async def test_a_browser_receives_acknowledges_reconnects_and_replays(tmp_path: Path) -> None:
    port = _free_port()
    config: dict[str, Any] = gateway_config(
        tmp_path,
        {"live": {"type": "push"}},
        push={"listen": f"127.0.0.1:{port}", "token_secret": "s"},
    )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = await browser.new_page()
        async with running_gateway(config) as run:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with run.client.post(
                "/v1/push/tokens", json={"subscriber": "b1"}, headers=headers
            ) as resp:
                token = (await resp.json())["token"]
            await page.goto(f"http://127.0.0.1:{port}/v1/push/example?token={token}")
            await eventually(lambda: run.gateway.push_presence("acme", "b1", None) == 1)
            first = await run.post([{"channel": "live", "to": "b1", "body": f"m{i}"}
                                    for i in range(3)])  # fmt: skip
            await eventually(lambda: _count(page, 3), what="three in the page")
            assert await _received(page) == first
            for message_id in first:
                await eventually(lambda m=message_id: _delivered(run, m), what="delivered")
        # The gateway is gone: the page's socket closed (1001), and it keeps trying.
        async with running_gateway(config) as run:
            missed = await run.post([{"channel": "live", "to": "b1", "body": f"n{i}"}
                                     for i in range(4)])  # fmt: skip
            await eventually(lambda: _count(page, 7), within=30, what="the missed four")
            assert await _received(page) == first + missed
            for message_id in missed:
                await eventually(lambda m=message_id: _delivered(run, m), what="delivered")
            texts = await page.locator("#messages li").all_inner_texts()
            assert texts == ["m0", "m1", "m2", "n0", "n1", "n2", "n3"]
        await browser.close()


async def _count(page: Page, n: int) -> bool:
    return len(await _received(page)) >= n


async def _delivered(run: Any, message_id: str) -> bool:
    return (await run.message(message_id))["state"] == "delivered"
