"""Status callbacks: tell the producer's callback URL when its message reaches a final state.

Callbacks live in the journal (an outbox written in the same transaction as the final state),
so a crash never loses one. The sender claims due callbacks with a short lease, POSTs them
signed like webhooks, deletes those answered 2xx, and reschedules the rest with exponential
backoff until `max_attempts`, after which they are dropped and counted.

Examples:
    sender = CallbackSender(journal, config.callbacks)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(sender.run())   # until sender.stop()
        sender.wake()                  # callbacks were queued
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiohttp
import msgspec

from sluice.config import CallbacksConfig
from sluice.flow.retry import RetryPolicy
from sluice.journal.base import CallbackJob, Journal, JournalError
from sluice.model import format_id, now_ms
from sluice.transports.signing import (
    MESSAGE_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

log = logging.getLogger("sluice.callbacks")

IDLE_POLL_SECONDS = 1.0


class CallbackStats(msgspec.Struct, frozen=True):
    """Callbacks answered 2xx, rescheduled after a failed try, and dropped after the last."""

    delivered: int
    retried: int
    dropped: int


class CallbackSender:
    def __init__(
        self,
        journal: Journal,
        config: CallbacksConfig,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._journal = journal
        self._config = config
        #: Wall-clock ms since the epoch: the journal's time, and the signature's timestamp.
        self._clock = clock
        self._secret = config.secret.encode() if config.secret else None
        self._retry = RetryPolicy(
            config.max_attempts, config.base_seconds, config.max_seconds, 0.2, rng
        )
        self._kick = asyncio.Event()
        self._stopping = False
        self.delivered = 0
        self.retried = 0
        self.dropped = 0

    def stats(self) -> CallbackStats:
        return CallbackStats(self.delivered, self.retried, self.dropped)

    def wake(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        self._stopping = True
        self._kick.set()

    def session(self) -> aiohttp.ClientSession:
        """The HTTP client the callbacks go out on (`width` connections at most)."""
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_seconds)
        connector = aiohttp.TCPConnector(limit=self._config.width)
        return aiohttp.ClientSession(timeout=timeout, connector=connector)

    async def run(self) -> None:
        async with self.session() as session:
            while not self._stopping:
                self._kick.clear()
                try:
                    if await self.send_due(session):
                        continue
                except JournalError as exc:  # the journal is down: the outbox waits for it
                    log.warning("callbacks: %s; trying again in %.0f s", exc, IDLE_POLL_SECONDS)
                try:
                    async with asyncio.timeout(IDLE_POLL_SECONDS):
                        await self._kick.wait()
                except TimeoutError:
                    pass

    async def send_due(self, session: aiohttp.ClientSession) -> int:
        """Claim the callbacks due now (up to `width`), post them, and record what became of
        them; returns how many were claimed (0: none due)."""
        lease_ms = int(self._config.timeout_seconds * 2000)
        jobs = await self._journal.claim_callbacks(self._config.width, self._clock(), lease_ms)
        if jobs:
            await self._post_all(session, jobs)
        return len(jobs)

    async def _post_all(self, session: aiohttp.ClientSession, jobs: list[CallbackJob]) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._post(session, job)) for job in jobs]
        done, retry, dropped = [], [], []
        now = self._clock()
        for job, task in zip(jobs, tasks, strict=True):
            ok, why = task.result()
            if ok:
                done.append(job.id)
                continue
            due = self._retry.next_due_ms(job.attempts, now, None)
            if due is None:
                log.warning(
                    "callback for %s to %s dropped after %d attempts: %s",
                    format_id(job.message_id),
                    job.url,
                    job.attempts,
                    why,
                )
                dropped.append(job.id)
            else:
                retry.append((job.id, due))
        self.delivered += len(done)
        self.retried += len(retry)
        self.dropped += len(dropped)
        await self._journal.finish_callbacks(done, retry, dropped)

    async def _post(self, session: aiohttp.ClientSession, job: CallbackJob) -> tuple[bool, str]:
        timestamp = str(self._clock() // 1000)
        headers = {
            "Content-Type": "application/json",
            MESSAGE_ID_HEADER: format_id(job.message_id),
            TIMESTAMP_HEADER: timestamp,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, timestamp, job.payload)
        try:
            async with session.post(job.url, data=job.payload, headers=headers) as resp:
                await resp.read()
                return 200 <= resp.status < 300, f"HTTP {resp.status}"
        except TimeoutError:
            return False, f"timed out after {self._config.timeout_seconds:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            return False, f"connection error: {exc}"
