"""The embedded journal served to another process's `JournalClient` on a real Unix socket
(journal/remote/): calls and their errors cross unchanged, the owner's state is pushed, a
vanished owner fails calls at once and is found again, a bad stream costs only its own
connection."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sluice.journal.base import (
    CancelResult,
    DeadlinePassed,
    IdempotencyConflict,
    Journal,
    JournalError,
    JournalStats,
)
from sluice.journal.broadcasts import NewBroadcast, UnknownTopics
from sluice.journal.remote import JournalClient, JournalServer
from sluice.journal.remote.wire import NOT_CALLS, CallTable, FrameReader, OwnerState, WireError
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, Message, Priority, State, now_ms

TENANT = "acme"
_ids = IdGenerator(node=7)


def make(recipient: str = "+15550001", **fields: Any) -> Message:
    return Message(_ids.next(), TENANT, "web", recipient, "hello", **fields)


@pytest.fixture
def socket_path() -> Path:
    # tmp_path can be longer than the 107 bytes a Unix socket's path may have.
    return Path(tempfile.mkdtemp(prefix="sj", dir="/tmp")) / "journal.sock"


class Owner:
    """A real SqliteJournal served on a socket, as the owner process runs it."""

    def __init__(self, journal: Any, path: Path, **options: Any) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], Any]] = []
        self.server = JournalServer(
            journal,
            path,
            max_frame_bytes=1 << 20,
            after_call=lambda method, args, value: self.calls.append((method, args, value)),
            annex=lambda: b"annex-bytes",
            state_interval_seconds=0.01,
            heartbeat_seconds=0.05,
            **options,
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self.task = asyncio.create_task(self.server.run())

    async def stop(self) -> None:
        self.server.stop()
        assert self.task is not None
        await self.task


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, socket_path: Path, journal: Any = None
) -> AsyncIterator[tuple[JournalClient, Owner, SqliteJournal]]:
    sqlite = SqliteJournal(tmp_path / "journal.db")
    await sqlite.open()
    owner = Owner(journal or sqlite, socket_path, grace_seconds=0.2)
    await owner.start()
    client = JournalClient(socket_path, call_wait_seconds=2.0, reconnect_seconds=0.01)
    await client.open()
    try:
        yield client, owner, sqlite
    finally:
        await client.close()
        await owner.stop()
        await sqlite.close()


async def eventually(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_every_call_of_the_contract_crosses() -> None:
    contract = {
        name
        for name, _ in inspect.getmembers(Journal, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert set(CallTable().signatures) == contract - NOT_CALLS
    client_calls = {n for n, _ in inspect.getmembers(JournalClient, inspect.iscoroutinefunction)}
    assert contract <= client_calls


async def test_messages_inserted_read_and_cancelled_through_the_owner(
    tmp_path: Path, socket_path: Path
) -> None:
    async with served(tmp_path, socket_path) as (client, owner, sqlite):
        first, second = make("+1"), make("+2", priority=Priority.URGENT)
        result = await client.insert(TENANT, [first, second], "key-1", b"digest")
        assert result.ids == [first.id, second.id] and not result.replayed
        # Committed in the owner's journal itself, as one of its own inserts would be.
        record = await sqlite.get(TENANT, first.id)
        assert record is not None and record.message.recipient == "+1"
        remote = await client.get(TENANT, second.id)
        assert remote is not None and remote.message.priority == Priority.URGENT
        assert [r.message.id for r in await client.by_recipient(TENANT, "+2", None, 10)] == [
            second.id
        ]
        again = await client.insert(TENANT, [make("+1"), make("+2")], "key-1", b"digest")
        assert again.replayed and again.ids == result.ids
        assert await client.cancel(TENANT, first.id, now_ms()) is CancelResult.CANCELLED
        assert (await client.count_by_state()).get(State.CANCELLED) == 1
        # The owner heard of the insert (to wake its runners) and of the cancel.
        methods = [method for method, _, _ in owner.calls]
        assert methods.count("insert") == 2 and "cancel" in methods
        inserted = next(args for method, args, _ in owner.calls if method == "insert")
        assert [m.id for m in inserted[1]] == [first.id, second.id]


async def test_the_owners_errors_arrive_as_themselves(tmp_path: Path, socket_path: Path) -> None:
    async with served(tmp_path, socket_path) as (client, _, _):
        await client.insert(TENANT, [make()], "key-2", b"one")
        with pytest.raises(IdempotencyConflict):
            await client.insert(TENANT, [make()], "key-2", b"another")
        with pytest.raises(DeadlinePassed):
            await client.insert(TENANT, [make()], deadline=time.monotonic() - 1)
        new = NewBroadcast(_ids.next(), TENANT, b"spec", ("news", "sport"), now_ms())
        with pytest.raises(UnknownTopics) as missing:
            await client.create_broadcast(new, None, None, now_ms())
        assert missing.value.names == ["news", "sport"]


async def test_state_and_annex_are_pushed(tmp_path: Path, socket_path: Path) -> None:
    async with served(tmp_path, socket_path) as (client, _, sqlite):
        await client.insert(TENANT, [make(), make()])
        await eventually(lambda: client.pending() == {"web": 2})
        assert client.fault() is None
        assert client.annex == b"annex-bytes"
        await eventually(lambda: client.stats().commits == sqlite.commits)
        await client.save_state("greylist", b"\x00\x01state")
        assert await client.load_state("greylist") == b"\x00\x01state"


class Slowed:
    """The owner's journal with a method held until the test lets it go."""

    def __init__(self, journal: SqliteJournal, method: str) -> None:
        self._journal = journal
        self._method = method
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._journal, name)
        if name != self._method:
            return found

        async def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            await self.release.wait()
            return await found(*args, **kwargs)

        return held


async def test_a_slow_owner_is_waited_for_never_answered_for(
    tmp_path: Path, socket_path: Path
) -> None:
    sqlite = SqliteJournal(tmp_path / "journal.db")
    await sqlite.open()
    slowed = Slowed(sqlite, "insert")
    owner = Owner(slowed, socket_path, grace_seconds=5.0)
    await owner.start()
    client = JournalClient(socket_path, call_wait_seconds=0.3, reconnect_seconds=0.01)
    await client.open()
    try:
        await client.wait_up()
        message = make()
        # Longer than call_wait: the client must not answer "failed" for what then commits.
        inserting = asyncio.create_task(client.insert(TENANT, [message], deadline=None))
        await slowed.entered.wait()
        await asyncio.sleep(0.6)  # the owner stays alive (its pushes) while the call waits
        assert not inserting.done() and client.fault() is None
        # The owner is told to stop with the call under way: it answers it before closing.
        stopping = asyncio.create_task(owner.stop())
        slowed.release.set()
        with pytest.raises(DeadlinePassed):  # 0.3 s given by the client: nothing stored
            await inserting
        await stopping
        assert await sqlite.get(TENANT, message.id) is None
    finally:
        await client.close()
        await sqlite.close()


async def test_a_vanished_owner_fails_calls_at_once_and_is_found_again(
    tmp_path: Path, socket_path: Path
) -> None:
    sqlite = SqliteJournal(tmp_path / "journal.db")
    await sqlite.open()
    slowed = Slowed(sqlite, "get")
    owner = Owner(slowed, socket_path, grace_seconds=0.0)
    await owner.start()
    client = JournalClient(socket_path, call_wait_seconds=2.0, reconnect_seconds=0.01)
    await client.open()
    try:
        await client.wait_up()
        in_flight = asyncio.create_task(client.get(TENANT, 1))
        await slowed.entered.wait()
        stopping = asyncio.create_task(owner.stop())
        slowed.release.set()
        assert await in_flight is None  # answered before the owner went
        await stopping
        await eventually(lambda: client.fault() is not None)
        with pytest.raises(JournalError, match="not answering"):
            await client.insert(TENANT, [make()])
        # The owner comes back on the same socket: the client finds it by itself.
        owner = Owner(sqlite, socket_path, grace_seconds=0.0)
        await owner.start()
        await eventually(lambda: client.fault() is None)
        assert len((await client.insert(TENANT, [make()])).ids) == 1
    finally:
        await client.close()
        await owner.stop()
        await sqlite.close()


class FakeOwner:
    """An owner process that answers its edges nothing: it closes a connection on the first
    call (`close`), or stays silent after its first state push (`silent`)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.mode = mode
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeOwner:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CallTable().encode_state(OwnerState({}, None, JournalStats({}, 0, 0, 0, 0))))
        await writer.drain()
        await reader.read(1)  # a call arrives
        if self.mode == "close":
            writer.close()
        else:
            await reader.read()  # silent until the client goes


@pytest.mark.parametrize("mode", ["close", "silent"])
async def test_a_call_the_owner_never_answers_fails_as_unknown(
    socket_path: Path, mode: str
) -> None:
    async with FakeOwner(socket_path, mode):
        client = JournalClient(socket_path, call_wait_seconds=0.4, reconnect_seconds=0.01)
        await client.open()
        try:
            await client.wait_up()
            started = time.monotonic()
            with pytest.raises(JournalError, match="went away"):
                await client.insert(TENANT, [make()], "key", b"d")
            # Silent: dropped once nothing was heard for call_wait, not before.
            assert (time.monotonic() - started >= 0.3) == (mode == "silent")
        finally:
            await client.close()


async def test_a_bad_stream_costs_only_its_own_connection(
    tmp_path: Path, socket_path: Path
) -> None:
    async with served(tmp_path, socket_path) as (client, owner, _):
        for garbage in (
            (1 << 30).to_bytes(4, "big"),  # a frame over the limit
            b"\x00\x00\x00\x03abc",  # a body that is no call
            CallTable()._frame((5, "drop_everything", ())),  # no such call
            CallTable()._frame((6, "get", ("acme",))),  # arguments missing
        ):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            writer.write(garbage)
            await writer.drain()
            # The owner closes this connection (after its state push), and only this one.
            pushed = await asyncio.wait_for(reader.read(), 5)
            assert reader.at_eof() and pushed.startswith(len(pushed[4:]).to_bytes(4, "big"))
            writer.close()
        assert len((await client.insert(TENANT, [make()])).ids) == 1
        assert owner.server.connections  # the client's connection is still there


def test_frames_are_split_wherever_the_stream_breaks() -> None:
    table = CallTable()
    frames = table.encode_call(1, "get", ("acme", 1)) + table.encode_call(2, "next_due", ("w",))
    for cut in range(len(frames) + 1):
        reader = FrameReader(1024)
        bodies = reader.feed(frames[:cut]) + reader.feed(frames[cut:])
        assert [table.decode_call(body)[:2] for body in bodies] == [(1, "get"), (2, "next_due")]
    with pytest.raises(WireError, match="over the limit"):
        FrameReader(16).feed((17).to_bytes(4, "big"))


def test_values_of_the_wrong_type_are_refused() -> None:
    table = CallTable()
    body = table.encode_call(3, "get", ("acme", "not an id"))[4:]
    with pytest.raises(WireError, match="arguments of get"):
        table.decode_call(body)


def test_the_socket_is_for_the_gateways_user_only(socket_path: Path) -> None:
    async def check() -> int:
        server = JournalServer(object(), socket_path, max_frame_bytes=1024)  # type: ignore[arg-type]
        await server.start()
        try:
            return os.stat(socket_path).st_mode & 0o777
        finally:
            await server.close()

    assert asyncio.run(check()) & 0o077 == 0  # nobody but its owner
    assert not socket_path.exists()


async def test_a_stale_socket_left_by_a_killed_owner_is_replaced(
    tmp_path: Path, socket_path: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()  # a socket file nobody listens on, as SIGKILL leaves it
    async with served(tmp_path, socket_path) as (client, _, _):
        assert len((await client.insert(TENANT, [make()])).ids) == 1
