"""The urgent lane and the request deadline, through the real HTTP server and SQLite journal."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from fixtures_http import KEY_A, make_config, running_api

URGENT = {"Sluice-Priority": "urgent"}


def msg(to: str = "+447900000001", **fields: Any) -> dict[str, Any]:
    return {"channel": "web", "to": to, "body": "hello", **fields}


async def test_a_request_that_outlives_its_deadline_is_refused_and_not_stored(
    tmp_path: Path,
) -> None:
    config = make_config(admission={"enabled": False, "request_deadline_seconds": 0.05})
    async with running_api(tmp_path, config) as api:
        # Another connection holds the journal's write lock: the request waits for its commit.
        blocker = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        post = asyncio.create_task(
            api.call("POST", "/v1/messages", KEY_A, json=msg("+447900000099"))
        )
        # Past the deadline by the clock it is on (asyncio's timers may fire a little early).
        await asyncio.sleep(started + 0.07 - time.monotonic())
        assert time.monotonic() > started + 0.05
        blocker.execute("ROLLBACK")
        blocker.close()
        status, body, headers = await post
        assert status == 503
        assert body["error"]["code"] == "deadline_passed"
        assert "admission.request_deadline_seconds" in body["error"]["message"]
        assert headers["Retry-After"] == "1"
        status, page, _ = await api.call("GET", "/v1/messages?to=%2B447900000099")
        assert status == 200 and page["messages"] == []
        # Without a wait, the same request is stored.
        status, body, _ = await api.call("POST", "/v1/messages", KEY_A, json=msg())
        assert status == 202


async def test_the_urgent_lane_holds_only_urgent_messages(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        status, body, _ = await api.call(
            "POST", "/v1/messages", KEY_A, json=msg(priority="urgent"), headers=URGENT
        )
        assert status == 202
        status, body, _ = await api.call(
            "POST",
            "/v1/messages",
            KEY_A,
            json={"messages": [msg(priority="urgent"), msg()]},
            headers=URGENT,
        )
        assert status == 422
        assert body["error"]["code"] == "not_urgent"
        assert body["error"]["field"] == "Sluice-Priority"


async def test_urgent_messages_use_the_backlog_reserve(tmp_path: Path) -> None:
    config = make_config(limits={"max_backlog": 2, "urgent_backlog_reserve": 2})
    async with running_api(tmp_path, config) as api:
        for i in range(2):
            status, _, _ = await api.call("POST", "/v1/messages", KEY_A, json=msg(f"+4479{i}"))
            assert status == 202
        status, body, headers = await api.call("POST", "/v1/messages", KEY_A, json=msg())
        assert (status, body["error"]["code"]) == (429, "backlog_full")
        assert "Retry-After" in headers
        # An urgent request gets the reserve, but no more than the reserve.
        statuses = []
        for _ in range(3):
            status, _, _ = await api.call(
                "POST", "/v1/messages", KEY_A, json=msg(priority="urgent"), headers=URGENT
            )
            statuses.append(status)
        assert statuses == [202, 202, 429]
