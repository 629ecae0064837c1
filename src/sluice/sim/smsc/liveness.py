"""How the SMSC simulator keeps its connections honest: the bind deadline and idle probes.

Like a real SMSC it does not keep a connection that never binds, nor a bind that no longer
answers:

- A connection that has no successful bind ``bind_timeout_ms`` after its connect is closed
  (counted ``bind_timeouts``). A refused bind does not restart the count.
- A bind that has sent nothing for ``enquire_link_ms`` is sent an enquire_link
  (``enquire_links_sent``). Its enquire_link_resp must then come within
  ``enquire_link_timeout_ms``, whatever else arrives, or the bind is closed
  (``enquire_link_timeouts``), without an unbind: that would go unanswered too. A bind that
  keeps talking is never probed.

One loop timer per connection, armed for the next time something may be due and re-armed
from there: a read only stores its time (``EsmeLink.last_read``), so a busy bind costs one
attribute store per read and one timer per ``enquire_link_ms``.
Changed while running, ``bind_timeout_ms`` applies to the connections opened afterwards, the
enquire_link options from each bind's next timer (switching ``enquire_link_ms`` on arms the
binds already open).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sluice.protocols.smpp import EnquireLink, LocalProtocolError, Pdu
from sluice.sim.smsc.options import SmscOptions
from sluice.sim.smsc.stats import Counts

if TYPE_CHECKING:
    from sluice.sim.smsc.session import EsmeLink


@dataclass(slots=True)
class _Watch:
    """One connection's timer, and the sequence_number of our enquire_link it owes (0: none)."""

    handle: asyncio.TimerHandle | None = None
    probe: int = 0


class Liveness:
    """The bind deadline and the idle enquire_link of every connection (module docstring)."""

    def __init__(
        self,
        counts: Counts,
        emit: Callable[[EsmeLink, bytes], None],
        flush: Callable[[], None],
        unregister: Callable[[EsmeLink], None],
    ) -> None:
        self._counts = counts
        self._emit = emit
        self._flush = flush
        self._unregister = unregister
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[EsmeLink, _Watch] = {}
        self._idle = 0.0
        self.apply(SmscOptions())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def apply(self, options: SmscOptions) -> None:
        was_probing = self._idle > 0
        self._bind_timeout = options.bind_timeout_ms / 1000.0
        self._idle = options.enquire_link_ms / 1000.0
        self._answer_timeout = options.enquire_link_timeout_ms / 1000.0
        if self._idle > 0 and not was_probing:
            for link, watch in self._watches.items():
                if watch.handle is None and link.session.is_bound:
                    self._arm(link, watch, link.last_read + self._idle, self._on_idle)

    def connected(self, link: EsmeLink) -> None:
        """A new connection: start its bind deadline."""
        watch = self._watches[link] = _Watch()
        loop = self._loop
        if self._bind_timeout > 0 and loop is not None:
            self._arm(link, watch, loop.time() + self._bind_timeout, self._on_bind_deadline)

    def bound(self, link: EsmeLink) -> None:
        """``link`` is bound: the bind deadline is off, the idle timer on."""
        watch = self._watches.get(link)
        if watch is None:
            return
        self._disarm(watch)
        if self._idle > 0 and self._loop is not None:
            self._arm(link, watch, self._loop.time() + self._idle, self._on_idle)

    def answered(self, link: EsmeLink, pdu: Pdu) -> bool:
        """Whether ``pdu``, an enquire_link_resp, answers our enquire_link on ``link``."""
        watch = self._watches.get(link)
        if watch is None or not watch.probe or pdu.sequence_number != watch.probe:
            return False
        watch.probe = 0
        self._disarm(watch)
        if self._idle > 0:
            self._arm(link, watch, link.last_read + self._idle, self._on_idle)
        return True

    def lost(self, link: EsmeLink) -> None:
        """``link`` is gone: stop its timer."""
        watch = self._watches.pop(link, None)
        if watch is not None:
            self._disarm(watch)

    def close(self) -> None:
        """Stop every timer (the simulator is closing)."""
        for watch in self._watches.values():
            self._disarm(watch)

    # -- timers ----------------------------------------------------------------------------

    def _arm(
        self, link: EsmeLink, watch: _Watch, when: float, fire: Callable[[EsmeLink], None]
    ) -> None:
        loop = self._loop
        assert loop is not None
        watch.handle = loop.call_at(when, fire, link)

    @staticmethod
    def _disarm(watch: _Watch) -> None:
        if watch.handle is not None:
            watch.handle.cancel()
            watch.handle = None

    def _current(self, link: EsmeLink) -> _Watch | None:
        """The watch of a link still worth watching, its fired timer cleared."""
        watch = self._watches.get(link)
        if watch is None:
            return None
        watch.handle = None
        if not link.is_open or link.closing:
            return None
        return watch

    def _on_bind_deadline(self, link: EsmeLink) -> None:
        watch = self._current(link)
        if watch is None or link.account is not None:
            return
        self._counts.bind_timeouts += 1
        self._close(link)

    def _on_idle(self, link: EsmeLink) -> None:
        watch = self._current(link)
        if watch is None or self._idle <= 0 or not link.session.is_bound:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        due = link.last_read + self._idle
        if now < due:  # it spoke since the timer was armed
            self._arm(link, watch, due, self._on_idle)
            return
        session = link.session
        with contextlib.suppress(LocalProtocolError):  # unbinding: nothing to probe
            self._emit(link, session.send(EnquireLink()))
            watch.probe = session.last_sequence
            self._counts.enquire_links_sent += 1
            self._arm(link, watch, now + self._answer_timeout, self._on_answer_deadline)
            self._flush()

    def _on_answer_deadline(self, link: EsmeLink) -> None:
        watch = self._current(link)
        if watch is None or not watch.probe:
            return
        watch.probe = 0
        self._counts.enquire_link_timeouts += 1
        self._close(link)

    def _close(self, link: EsmeLink) -> None:
        self._unregister(link)
        link.closing = True
        self._flush()
        transport = link.transport
        if transport is not None:
            transport.close()
