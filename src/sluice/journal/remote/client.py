"""JournalClient: the `Journal` of an edge process whose journal another process owns.

With `server.api_processes`, the HTTP and SMTP edges run in processes of their own and the
embedded journal stays with one owner (`server.JournalServer`, the process that delivers).
Each call goes to the owner as one frame on a Unix socket and returns when the owner's
journal has answered: an insert returns after the owner's group commit, so the edge's 202
means what it always means. The synchronous half of the contract (`pending`, `fault`,
`stats`) is answered from what the owner last pushed (at most `STATE_INTERVAL_SECONDS` old).

If the owner is gone (killed, restarting), calls fail at once with a JournalError (HTTP 503)
and `fault()` says so, so /readyz is false; a loop kept while the client is open connects
again as soon as the owner listens. A call in flight when the connection drops fails with a
JournalError saying its outcome is unknown: a producer's retry with its Idempotency-Key is
then answered from the journal, never stored twice.

A call waits for the owner's answer as long as the owner is alive, however slow, because
giving up on a call the owner goes on with would answer "failed" for what then commits. The
owner pushes its state at least every `HEARTBEAT_SECONDS`; after `call_wait_seconds`
(`journal.ingress_wait_seconds`) without a word from it (a stopped or wedged process) the
client drops the link, and the calls on it fail as "outcome unknown". An insert always
carries a deadline to the owner (its own, or `call_wait_seconds` from now), which the owner
checks before the commit begins: past it, nothing is stored and the answer is
DeadlinePassed. Deadlines are `time.monotonic()` values, one clock for every process of a
machine (CLOCK_MONOTONIC).

Examples:
    journal = JournalClient(Path("var/sluice.db.sock"))
    await journal.open()
    result = await journal.insert("acme", [message])
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, cast

from sluice.journal.audience import (
    Member,
    StoredSubscriber,
    SubscribeCounts,
    SubscriberRow,
    TopicInfo,
    UpsertCounts,
)
from sluice.journal.base import (
    CallbackJob,
    CancelResult,
    Completion,
    JournalError,
    JournalStats,
    MessageRecord,
    Receipt,
    SubmitResult,
    SweepResult,
)
from sluice.journal.broadcasts import (
    BroadcastMember,
    BroadcastRecord,
    BroadcastStatus,
    ExpansionChunk,
    NewBroadcast,
    StatusChange,
)
from sluice.journal.remote.wire import (
    FAILURE,
    PUSH_ID,
    REPLY,
    STATE,
    CallTable,
    FrameReader,
    OwnerState,
    WireError,
)
from sluice.model import Message, State

log = logging.getLogger("sluice.journal")

#: How long the owner may stay silent before the client takes it for wedged and drops the
#: link (journal.ingress_wait_seconds); an insert without a deadline gets this one.
CALL_WAIT_SECONDS = 3.0
#: Between two attempts to reach the owner (after a failed connect or a lost link).
RECONNECT_SECONDS = 0.2
#: The largest frame either side accepts (a call or a reply); see `max_frame_bytes`.
MAX_FRAME_BYTES = 256 * 1024 * 1024

_NO_STATS = JournalStats({}, 0, 0, 0.0, 0)


class _Link(asyncio.Protocol):
    """The connection to the owner: frames written once per turn, replies to their calls."""

    def __init__(self, client: JournalClient) -> None:
        self._client = client
        self._reader = FrameReader(client.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self.lost = asyncio.get_running_loop().create_future()
        #: When the owner was last heard on this link (any frame).
        self.heard_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._client.link_lost(self)

    def data_received(self, data: bytes) -> None:
        self.heard_at = time.monotonic()
        try:
            for body in self._reader.feed(data):
                self._client.frame_received(body)
        except WireError as exc:
            log.error("journal socket: %s; closing the connection", exc)
            self.close()

    def silent_for(self) -> float:
        return time.monotonic() - self.heard_at

    def send(self, frame: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class JournalClient:
    def __init__(
        self,
        path: str | Path,
        *,
        call_wait_seconds: float = CALL_WAIT_SECONDS,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.max_frame_bytes = max_frame_bytes
        self._call_wait = call_wait_seconds
        self._reconnect = reconnect_seconds
        self._table = CallTable()
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        #: Whether a link has ever been up (for the log: "answers again").
        self._was_up = False
        self._calls: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._ids = itertools.count(1)
        self._state: OwnerState | None = None
        self._up = asyncio.Event()
        #: The owner's annex (its process layer's figures), as last pushed.
        self.annex = b""
        self._unreachable: str | None = f"the journal's process has not answered yet ({path})"
        self._loops: contextlib.AsyncExitStack | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.commits = 0
        self.ops = 0
        self.busy_seconds = 0.0

    # ---------------------------------------------------------------- life cycle

    async def open(self) -> None:
        """Keep a connection to the owner from now until `close` (the owner need not be up
        yet: until it is, calls fail with a JournalError and `fault()` says why)."""
        with contextlib.suppress(JournalError):
            await self._connected()
        loops = contextlib.AsyncExitStack()
        group = await loops.enter_async_context(asyncio.TaskGroup())
        self._loop_task = group.create_task(self._keep_connected(), name="journal-link")
        self._loops = loops

    async def close(self) -> None:
        loops, self._loops = self._loops, None
        if loops is not None:
            assert self._loop_task is not None
            self._loop_task.cancel()
            await loops.aclose()
        if self._link is not None:
            self._link.close()
            self._link = None
        self._fail_calls(JournalError("the journal is closed"))

    async def wait_up(self) -> None:
        """Return once the owner has answered (its first state push)."""
        await self._up.wait()

    async def _keep_connected(self) -> None:
        """Connect whenever there is no link; drop one on which the owner fell silent."""
        while True:
            try:
                link = self._link
                if link is None:
                    with contextlib.suppress(JournalError):
                        await self._connected()
                    await asyncio.sleep(self._reconnect)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._call_wait / 4):
                        await asyncio.shield(link.lost)
                if link.lost.done():
                    await asyncio.sleep(self._reconnect)  # never a tight loop of links
                elif link.silent_for() > self._call_wait:
                    log.warning(
                        "journal: its process has said nothing for %.1f s; dropping the link",
                        link.silent_for(),
                    )
                    link.abort()
            except asyncio.CancelledError:
                raise
            except Exception:  # this loop must outlive anything: it is the way back
                log.exception("journal: keeping the link to its process")
                await asyncio.sleep(self._reconnect)

    async def _connected(self) -> _Link:
        """The link to the owner, connecting if there is none (one caller connects; the
        others wait for its link)."""
        link = self._link
        if link is not None:
            return link
        async with self._connecting:
            if self._link is not None:
                return self._link
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._call_wait):
                    _, link = await loop.create_unix_connection(lambda: _Link(self), str(self.path))
            except (OSError, TimeoutError) as exc:
                why = f"the journal's process is not answering on {self.path}: {exc or 'timeout'}"
                if self._was_up and self._unreachable is None:
                    log.warning("journal: %s", why)
                self._unreachable = why
                raise JournalError(why) from None
            if self._was_up:
                log.warning("journal: its process answers again on %s", self.path)
            self._was_up = True
            self._link = link
            return link

    def link_lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            self._state = None
            self._up.clear()
            self._unreachable = f"the journal's process closed its socket {self.path}"
            log.warning("journal: %s", self._unreachable)
        self._fail_calls(
            JournalError(
                "the journal's process went away during the call: whether it took effect is "
                "unknown (a retry with the same Idempotency-Key is safe)"
            )
        )

    def _fail_calls(self, error: JournalError) -> None:
        calls, self._calls = self._calls, {}
        for _, future in calls.values():
            if not future.done():
                future.set_exception(error)

    # ---------------------------------------------------------------- frames

    def frame_received(self, body: bytes) -> None:
        call_id, kind, raw = self._table.decode_reply(body)
        if call_id == PUSH_ID and kind == STATE:
            self._took(self._table.decode_state(raw))
            return
        call = self._calls.pop(call_id, None)
        if call is None:
            return  # its caller is gone (cancelled)
        method, future = call
        if future.done():
            return
        try:
            if kind == REPLY:
                future.set_result(self._table.decode_value(method, raw))
            elif kind == FAILURE:
                future.set_exception(self._table.decode_failure(raw))
            else:
                raise WireError(f"a journal frame of unknown kind {kind}")
        except WireError as exc:
            future.set_exception(JournalError(f"the journal's answer to {method}: {exc}"))
            raise

    def _took(self, state: OwnerState) -> None:
        self._state = state
        self._unreachable = None
        self._up.set()
        if state.annex is not None:
            self.annex = state.annex
        self.commits = state.stats.commits
        self.ops = state.stats.ops
        self.busy_seconds = state.stats.busy_seconds

    async def _call(self, method: str, *args: Any) -> Any:
        """Send the call; its answer, however long the owner takes while it lives (the
        link is dropped, failing the call, once the owner is silent too long)."""
        link = await self._connected()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (method, future)
        link.send(self._table.encode_call(call_id, method, args))
        try:
            return await future
        finally:
            self._calls.pop(call_id, None)

    # ---------------------------------------------------------------- the synchronous half

    def fault(self) -> str | None:
        if self._unreachable is not None or self._state is None:
            return self._unreachable or f"the journal's process has not answered ({self.path})"
        return self._state.fault

    def pending(self) -> dict[str, int]:
        return self._state.pending if self._state is not None else {}

    def stats(self) -> JournalStats:
        return self._state.stats if self._state is not None else _NO_STATS

    def queue_depth(self) -> int:
        """Operations waiting for the owner's writer, and this process's calls unanswered."""
        return self.stats().queue_depth + len(self._calls)

    def watch_due(self, wake: Callable[[str, bool], None]) -> None:
        """Nothing to watch: the owner delivers, and wakes its runners on every insert it
        commits for a caller."""

    # ---------------------------------------------------------------- the calls

    async def insert(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        if deadline is None:  # the owner must not begin a commit nobody waits for any more
            deadline = time.monotonic() + self._call_wait
        result: SubmitResult = await self._call(
            "insert", tenant, messages, idempotency_key, digest, deadline
        )
        return result

    async def count_by_state(self) -> dict[State, int]:
        counts: dict[State, int] = await self._call("count_by_state")
        return counts

    async def claim(
        self, channel: str, limit: int, non_urgent_limit: int, owner: int, now: int, lease_ms: int
    ) -> list[Message]:
        claimed: list[Message] = await self._call(
            "claim", channel, limit, non_urgent_limit, owner, now, lease_ms
        )
        return claimed

    async def save_state(self, name: str, data: bytes) -> None:
        await self._call("save_state", name, data)

    async def load_state(self, name: str) -> bytes | None:
        data: bytes | None = await self._call("load_state", name)
        return data

    async def complete(self, owner: int, completions: list[Completion]) -> int:
        count: int = await self._call("complete", owner, completions)
        return count

    async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
        count: int = await self._call("renew_leases", owner, until, list(ids))
        return count

    async def release(self, owner: int, now: int) -> int:
        count: int = await self._call("release", owner, now)
        return count

    async def sweep(self, now: int, idempotency_ttl_ms: int) -> SweepResult:
        result: SweepResult = await self._call("sweep", now, idempotency_ttl_ms)
        return result

    async def reroute(self, from_channel: str, to_channel: str, limit: int, now: int) -> int:
        count: int = await self._call("reroute", from_channel, to_channel, limit, now)
        return count

    async def cancel(self, tenant: str, message_id: int, now: int) -> CancelResult:
        result: CancelResult = await self._call("cancel", tenant, message_id, now)
        return result

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        record: MessageRecord | None = await self._call("get", tenant, message_id)
        return record

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        records: list[MessageRecord] = await self._call(
            "by_recipient", tenant, recipient, before_id, limit
        )
        return records

    async def next_due(self, channel: str) -> int | None:
        due: int | None = await self._call("next_due", channel)
        return due

    async def apply_receipts(self, channel: str, receipts: list[Receipt]) -> int:
        count: int = await self._call("apply_receipts", channel, receipts)
        return count

    async def expire_receipts(
        self, channel: str, sent_before: int, now: int, detail: str, limit: int = 10_000
    ) -> int:
        count: int = await self._call("expire_receipts", channel, sent_before, now, detail, limit)
        return count

    async def claim_callbacks(self, limit: int, now: int, lease_ms: int) -> list[CallbackJob]:
        jobs: list[CallbackJob] = await self._call("claim_callbacks", limit, now, lease_ms)
        return jobs

    async def finish_callbacks(
        self, done: list[int], retry: list[tuple[int, int]], dropped: list[int]
    ) -> None:
        await self._call("finish_callbacks", done, retry, dropped)

    # audience

    async def upsert_subscribers(
        self, tenant: str, rows: list[SubscriberRow], now: int
    ) -> UpsertCounts:
        counts: UpsertCounts = await self._call("upsert_subscribers", tenant, rows, now)
        return counts

    async def subscriber(self, tenant: str, external_id: str) -> StoredSubscriber | None:
        found: StoredSubscriber | None = await self._call("subscriber", tenant, external_id)
        return found

    async def delete_subscriber(self, tenant: str, external_id: str) -> bool:
        done: bool = await self._call("delete_subscriber", tenant, external_id)
        return done

    async def create_topic(self, tenant: str, name: str, now: int) -> bool:
        created: bool = await self._call("create_topic", tenant, name, now)
        return created

    async def topic(self, tenant: str, name: str) -> TopicInfo | None:
        info: TopicInfo | None = await self._call("topic", tenant, name)
        return info

    async def topics(self, tenant: str, after: str | None, limit: int) -> list[TopicInfo]:
        infos: list[TopicInfo] = await self._call("topics", tenant, after, limit)
        return infos

    async def delete_topic(self, tenant: str, name: str) -> bool:
        done: bool = await self._call("delete_topic", tenant, name)
        return done

    async def subscribe(
        self, tenant: str, topic: str, external_ids: list[str], now: int
    ) -> SubscribeCounts | None:
        counts: SubscribeCounts | None = await self._call(
            "subscribe", tenant, topic, external_ids, now
        )
        return counts

    async def unsubscribe(self, tenant: str, topic: str, external_ids: list[str]) -> int | None:
        count: int | None = await self._call("unsubscribe", tenant, topic, external_ids)
        return count

    async def topic_members(
        self, tenant: str, topic: str, after: int, limit: int
    ) -> list[Member] | None:
        members: list[Member] | None = await self._call(
            "topic_members", tenant, topic, after, limit
        )
        return members

    # broadcasts

    async def create_broadcast(
        self, new: NewBroadcast, idempotency_key: str | None, digest: bytes | None, now: int
    ) -> tuple[int, bool]:
        created: tuple[int, bool] = await self._call(
            "create_broadcast", new, idempotency_key, digest, now
        )
        return created

    async def broadcast(self, tenant: str, broadcast_id: int) -> BroadcastRecord | None:
        record: BroadcastRecord | None = await self._call("broadcast", tenant, broadcast_id)
        return record

    async def broadcasts(
        self, tenant: str, before_id: int | None, limit: int
    ) -> list[BroadcastRecord]:
        records: list[BroadcastRecord] = await self._call("broadcasts", tenant, before_id, limit)
        return records

    async def lease_broadcasts(
        self, owner: int, now: int, lease_ms: int, limit: int
    ) -> list[BroadcastRecord]:
        records: list[BroadcastRecord] = await self._call(
            "lease_broadcasts", owner, now, lease_ms, limit
        )
        return records

    async def expand_broadcast(self, owner: int, chunk: ExpansionChunk, now: int) -> bool:
        applied: bool = await self._call("expand_broadcast", owner, chunk, now)
        return applied

    async def broadcast_members(
        self, broadcast: int, topic_keys: tuple[int, ...], index: int, after: int, limit: int
    ) -> list[BroadcastMember]:
        members: list[BroadcastMember] = await self._call(
            "broadcast_members", broadcast, topic_keys, index, after, limit
        )
        return members

    async def release_broadcasts(self, owner: int) -> None:
        await self._call("release_broadcasts", owner)

    async def change_broadcast(
        self, tenant: str, broadcast_id: int, status: BroadcastStatus, now: int
    ) -> StatusChange | None:
        change: StatusChange | None = await self._call(
            "change_broadcast", tenant, broadcast_id, status, now
        )
        return change
