"""`sluice broadcast` against Sluice's HTTP server and a real Expander: send prints an id the
gateway knows, watch follows a broadcast to its end (the journal driven to final states, as
the delivery loop would), pause, resume and cancel print their counts, and every way of
failing is exit status 1 with a line that says what to do."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

from sluice.audience.expander import Expander
from sluice.cli.broadcasts import BarDisplay, BroadcastClient, watch_broadcast
from sluice.cli.main import build_parser
from sluice.journal.base import Completion
from sluice.model import IdGenerator, Outcome, State, format_id, now_ms, parse_id

# The HTTP API's test doubles (tests/ingress/fixtures_http.py): a real server over a journal.
sys.path.insert(0, str(Path(__file__).parent.parent / "ingress"))
from fixtures_http import KEY_A, KEY_B, Api, expanding, running_api

pytestmark = pytest.mark.integration

OWNER = 9
BROADCAST = {
    "topics": ["news"],
    "channels": ["sms"],
    "content": {"webhook": {"body": "Hi {{ name }}: {{ headline }}"}},
    "data": {"headline": "storm"},
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        await subscribe(running)
        yield running


async def subscribe(api: Api) -> None:
    """Five reachable members of "news" and two suppressed (no address, opted out)."""
    lines: list[dict[str, Any]] = [
        {
            "id": f"u{i}",
            "webhook": f"https://example.com/hook/{i}",
            "attributes": {"name": f"n{i}"},
            "topics": ["news"],
        }
        for i in range(5)
    ]
    lines.append({"id": "nowhere", "topics": ["news"]})
    lines.append(
        {"id": "opted", "webhook": "https://example.com/x", "opt_out": {"topics": ["news"]}}
        | {"topics": ["news"]}
    )
    body = "\n".join(msgspec.json.encode(line).decode() for line in lines).encode()
    status, result, _ = await api.call(
        "POST",
        "/v1/subscribers/import",
        data=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200 and not result["errors"], result


async def sluice(api: Api, *argv: str, key: str = KEY_A, url: str | None = None) -> int:
    """Run `sluice broadcast ARGV` in this process, as its entry point would."""
    command, *rest = argv
    args = build_parser().parse_args(
        ["broadcast", command, "--key", key, "--url", url or api.base, *rest]
    )
    status: int = await args.handler(args)
    return status


async def send(api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "storm.json"
    path.write_bytes(msgspec.json.encode(BROADCAST))
    assert await sluice(api, "send", str(path)) == 0
    out = capsys.readouterr().out
    return out.strip()


async def until_expanded(api: Api, expander: Expander, bid: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            expander.progressed.clear()
            _, view, _ = await api.call("GET", f"/v1/broadcasts/{bid}")
            if view["expanded_at"]:
                return view
            expander.poke()
            await expander.progressed.wait()


async def finish(api: Api) -> None:
    """Claim the broadcast's messages and finish them as a channel would: 2 sent, 1 delivered,
    2 failed. The last message ends last, so that no watch sees the broadcast completed
    before the receipt is in."""
    journal = api.gateway.journal
    claimed = await journal.claim("sms", 100, 100, OWNER, now_ms(), 30_000)
    assert len(claimed) == 5
    sent, failed = claimed[:3], claimed[3:]
    await journal.complete(
        OWNER, [Completion(m.id, State.SENT, "sms", 1, Outcome.SENT) for m in sent]
    )
    await journal.complete(OWNER, [Completion(sent[0].id, State.DELIVERED, "sms", 1, Outcome.SENT)])
    for m in failed:
        await journal.complete(OWNER, [Completion(m.id, State.FAILED, "sms", 1, Outcome.PERMANENT)])


async def test_send_prints_an_id_the_gateway_finds(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bid = await send(api, tmp_path, capsys)
    assert parse_id(bid) > 0
    status, view, _ = await api.call("GET", f"/v1/broadcasts/{bid}")
    assert status == 200 and view["topics"] == ["news"]
    # The same Idempotency-Key twice: the first broadcast's id, and a word that it is so.
    path = tmp_path / "storm.json"
    assert await sluice(api, "send", str(path), "--idempotency-key", "k-1") == 0
    first = capsys.readouterr().out.strip()
    assert await sluice(api, "send", str(path), "--idempotency-key", "k-1") == 0
    again = capsys.readouterr()
    assert again.out.strip() == first != bid
    assert "Idempotency-Key was used before" in again.err


async def test_watch_follows_a_broadcast_to_its_end_with_a_summary(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bid = await send(api, tmp_path, capsys)
    async with expanding(api) as expander:
        watching = asyncio.create_task(sluice(api, "watch", bid, "--interval", "0.05"))
        try:
            view = await until_expanded(api, expander, bid)
            assert view["phase"] == "sending" and view["counts"]["queued"] == 5
            await asyncio.sleep(0.2)  # a few polls while it is sending
            assert not watching.done()
            await finish(api)
            async with asyncio.timeout(10):
                assert await watching == 0
        finally:
            watching.cancel()
    out = capsys.readouterr().out.splitlines()
    # Without a terminal: a plain line a poll, then the summary.
    assert any(
        line.startswith(f"{bid} sending: 0/5 done") and "opted_out 1" in line for line in out
    ), out
    assert f"{bid} completed: 5/5 done" in out[-2]
    assert out[-1] == (
        f"broadcast {bid} completed: 2 sent, 1 delivered, 2 failed, 0 expired, 0 cancelled; "
        "suppressed 2: no_address 1, opted_out 1"
    )


async def test_send_watch_draws_a_bar_on_a_terminal(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bid = await send(api, tmp_path, capsys)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    async with expanding(api) as expander, BroadcastClient(api.base, KEY_A) as client:
        await until_expanded(api, expander, bid)
        await finish(api)
        final = await watch_broadcast(client, bid, 0.05, BarDisplay(console))
    assert final["phase"] == "completed"
    drawn = screen.getvalue()
    assert "completed" in drawn and "5/5" in drawn and "msgs/s" in drawn and "ETA 0:00" in drawn
    assert "suppressed 2: no_address 1, opted_out 1" in drawn


async def test_pause_resume_and_cancel_print_their_counts(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bid = await send(api, tmp_path, capsys)
    async with expanding(api) as expander:
        await until_expanded(api, expander, bid)
        assert await sluice(api, "pause", bid) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"broadcast {bid}: 5 messages held; phase paused (5 queued")
        assert await sluice(api, "resume", bid) == 0
        assert "5 messages released; phase sending" in capsys.readouterr().out
        claimed = await api.gateway.journal.claim("sms", 2, 2, OWNER, now_ms(), 30_000)
        assert len(claimed) == 2
        assert await sluice(api, "cancel", bid) == 0
        out = capsys.readouterr().out
        assert "3 messages cancelled; phase cancelling" in out and "2 sending" in out
        # The two in flight end; the watch then sees it cancelled and ends too.
        await api.gateway.journal.complete(
            OWNER, [Completion(m.id, State.SENT, "sms", 1, Outcome.SENT) for m in claimed]
        )
        assert await sluice(api, "watch", bid, "--plain") == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"broadcast {bid} cancelled: 2 sent, 0 delivered, 0 failed, 0 expired, 3 cancelled; "
        "suppressed 2: no_address 1, opted_out 1"
    )
    assert await sluice(api, "list") == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:6] == [bid, "cancelled", "5", "planned", "5", "done"]


async def test_failures_are_exit_status_1_with_what_to_do(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = format_id(IdGenerator(node=3).next())
    assert await sluice(api, "watch", unknown) == 1
    err = capsys.readouterr().err
    assert f"no broadcast {unknown!r}" in err and "sluice broadcast list" in err
    assert await sluice(api, "pause", "not-an-id") == 1
    assert "'not-an-id' is not a broadcast id" in capsys.readouterr().err
    # Text given as an id reaches no other endpoint.
    assert await sluice(api, "watch", f"{unknown}/cancel") == 1
    assert "is not a broadcast id" in capsys.readouterr().err
    assert await sluice(api, "watch", unknown, key="wrong") == 1
    assert "refused the API key (401 unauthorized): check --key" in capsys.readouterr().err
    assert await sluice(api, "list", key=KEY_B) == 0  # another tenant: nothing to list
    assert capsys.readouterr().out == ""
    assert await sluice(api, "watch", unknown, url="http://127.0.0.1:9") == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err
    # A broadcast the gateway refuses: its field and reason.
    path = tmp_path / "bad.json"
    path.write_bytes(msgspec.json.encode({**BROADCAST, "topics": ["nope"]}))
    assert await sluice(api, "send", str(path)) == 1
    err = capsys.readouterr().err
    assert "(422 unknown_topic, topics): no topic named 'nope'" in err
    # A file that is not JSON is the user's to fix before anything is sent: status 2.
    path.write_text("{not json")
    assert await sluice(api, "send", str(path)) == 2
    assert f"{path} is not JSON" in capsys.readouterr().err
