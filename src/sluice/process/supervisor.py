"""The supervisor: `sluice serve` with `server.workers` > 1 runs that many gateway processes
("children") of the configured role on one machine, sharing its ports, and keeps them running.

- **One set of ports.** The supervisor binds `server.listen` (and `smtp.listen` when the
  children run the SMTP front door) once; every child inherits the sockets and accepts on
  them, so the kernel spreads connections over the children, and a child's death loses none
  of the connections waiting in the queue (`process/listeners.py`).
- **Fresh interpreters.** A child is `python -m sluice.cli serve --config … --child {…}`: the
  program a user runs, in its own interpreter, given only the sockets, the environment and a
  `ChildSpec`. Nothing is forked from a running event loop, thread or database connection.
- **Distinct message ids.** Child i has node number `server.node + i` (the configuration
  check keeps the last one within 0..1023), or distinct random ones when `server.node` is
  unset; a restarted child keeps its slot's node.
- **Signals.** SIGTERM and SIGINT are passed on to every child as SIGTERM; each stops
  gracefully, and the supervisor exits 0 when all of them exit 0. Children still running
  `server.shutdown_grace_seconds + STOP_MARGIN_SECONDS` later are killed (exit 1).
- **Restarts.** A child that dies without being told to is started again after a delay that
  doubles while it keeps dying soon after its start (`RestartPolicy`). After
  MAX_QUICK_DEATHS such deaths in a row the supervisor stops the other children and exits 1:
  a bad database URL or a broken installation does not heal by restarting.
- **No orphans.** A child asks the kernel for SIGTERM when its parent dies (Linux's
  PR_SET_PDEATHSIG, `die_with_parent`), so even a supervisor killed with SIGKILL leaves no
  child behind: they stop gracefully, as if told to.

Examples:
    supervisor = Supervisor(config, serve_command("sluice.toml"))
    loop.add_signal_handler(signal.SIGTERM, supervisor.request_stop, "SIGTERM")
    status = await supervisor.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Literal

import msgspec

from sluice.config import Config
from sluice.journal.backends import split_journal
from sluice.model import NODE_MAX
from sluice.process.listeners import bind_listeners, bind_tcp

log = logging.getLogger("sluice.supervisor")

#: Delay before starting a dead child again; doubled after each further quick death.
RESTART_BASE_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
#: A child that lived this long had started properly: its death starts the count over.
STABLE_SECONDS = 10.0
#: Deaths in a row, each within STABLE_SECONDS of the start, after which the supervisor gives
#: up (systemd's StartLimitBurst is 5 as well). With the delays above, a child that cannot
#: start at all is tried 5 times in about 10 s (7.5 s of delays, and five start-ups).
MAX_QUICK_DEATHS = 5
#: Time children get after SIGTERM beyond server.shutdown_grace_seconds (HTTP drain, the last
#: commits, releasing leases, closing the journal) before they are killed.
STOP_MARGIN_SECONDS = 30.0
#: prctl(2) option: the signal this process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


class ChildSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the supervisor tells a child: JSON in the hidden `sluice serve --child` option."""

    #: The child's place among its siblings (0 … workers - 1), kept across restarts.
    slot: int
    #: Its node number in message ids.
    node: int
    #: The supervisor's pid: a child that finds another parent stops at once.
    parent: int
    #: The inherited listening sockets (none for the journal's owner in a split).
    http_fd: int | None
    smtp_fd: int | None = None
    health_fd: int | None = None
    admin_fd: int | None = None
    #: The push listener's socket, for a child that delivers (`push.listen`).
    push_fd: int | None = None
    #: The child's `server.role` when it is not the configured one: in the embedded
    #: journal's split (`server.api_processes`), "worker" for the owner, "api" for the edges.
    role: Literal["all", "api", "worker"] | None = None

    def encode(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def decode(cls, text: str) -> ChildSpec:
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a child specification: {exc}") from None


#: The command line that starts the child described by a spec.
ChildCommand = Callable[[ChildSpec], list[str]]


def serve_command(config_path: str, *, verbose: bool = False) -> ChildCommand:
    """Children as `sluice serve` in a fresh interpreter of the same Python."""

    def command(spec: ChildSpec) -> list[str]:
        return [
            sys.executable, "-m", "sluice.cli", *(["-v"] if verbose else []),
            "serve", "--config", config_path, "--child", spec.encode(),
        ]  # fmt: skip

    return command


def child_nodes(node: int | None, workers: int, rng: random.Random | None = None) -> list[int]:
    """Node numbers for the children: `node`, `node` + 1, … when set, else distinct random
    ones. Processes writing one journal must differ in their node (`model.IdGenerator`).

    Examples:
        >>> child_nodes(100, 3)
        [100, 101, 102]
    """
    if node is None:
        return (rng or random.SystemRandom()).sample(range(NODE_MAX + 1), workers)
    if node + workers - 1 > NODE_MAX:  # the configuration check says so first, naming the key
        raise ValueError(f"nodes {node}..{node + workers - 1} pass the largest node {NODE_MAX}")
    return list(range(node, node + workers))


def describe_exit(returncode: int) -> str:
    """How a child ended, for the log: "exited with status 1", "was killed by SIGKILL"."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


class RestartPolicy:
    """When to start a dead child again, and when to stop trying. Pure; the clock is given.

    A death within `stable_seconds` of the child's start is quick. The n-th quick death in a
    row waits `base_seconds * 2**(n-1)` (at most `max_seconds`) before the next start, and
    the `max_quick_deaths`-th gives up. A death after a longer life waits `base_seconds`.

    Examples:
        >>> now = [0.0]
        >>> policy = RestartPolicy(clock=lambda: now[0])
        >>> policy.started(0); now[0] += 1.0
        >>> policy.died(0), policy.quick_deaths(0)
        (0.5, 1)

    Warning: a child that keeps crashing after longer lives is restarted for ever, every
    `base_seconds`, with a log line each time; only deaths right after the start give up.
    """

    def __init__(
        self,
        *,
        base_seconds: float = RESTART_BASE_SECONDS,
        max_seconds: float = RESTART_MAX_SECONDS,
        stable_seconds: float = STABLE_SECONDS,
        max_quick_deaths: int = MAX_QUICK_DEATHS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.stable_seconds = stable_seconds
        self.max_quick_deaths = max_quick_deaths
        self._clock = clock
        self._started: dict[int, float] = {}
        self._quick: dict[int, int] = {}

    def started(self, slot: int) -> None:
        self._started[slot] = self._clock()

    def died(self, slot: int) -> float | None:
        """Seconds to wait before starting `slot` again, or None: give up."""
        if self._clock() - self._started[slot] >= self.stable_seconds:
            self._quick[slot] = 0
            return self.base_seconds
        quick = self._quick[slot] = self._quick.get(slot, 0) + 1
        if quick >= self.max_quick_deaths:
            return None
        return float(min(self.max_seconds, self.base_seconds * 2 ** (quick - 1)))

    def quick_deaths(self, slot: int) -> int:
        """Quick deaths of `slot` in a row, up to now."""
        return self._quick.get(slot, 0)


class Supervisor:
    """Runs `config.server.workers` children (or, in the embedded journal's split, its owner
    and `server.api_processes` edges) and keeps them running until `request_stop`."""

    def __init__(
        self,
        config: Config,
        command: ChildCommand,
        *,
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy | None = None,
        nodes: list[int] | None = None,
        stop_margin_seconds: float = STOP_MARGIN_SECONDS,
    ) -> None:
        self.config = config
        self._command = command
        self._env = dict(os.environ if env is None else env)
        self._policy = policy or RestartPolicy()
        #: With the embedded journal's split: slot 0 owns the journal and delivers, the others
        #: are its edges (`server.api_processes`).
        self.split = split_journal(config)
        if nodes is None:
            count = 1 + config.server.api_processes if self.split else config.server.workers
            nodes = child_nodes(config.server.node, count)
        #: Node numbers by slot.
        self.nodes = nodes
        #: The running children by slot.
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self._stop_margin = stop_margin_seconds
        self._stopping = asyncio.Event()
        self._kill_timer: asyncio.TimerHandle | None = None
        #: Why the supervisor failed (its exit status is then 1).
        self.error: str | None = None

    async def run(self) -> int:
        """Bind the ports, run the children until the stop (or until giving up), wait for
        every one of them to exit; 0 when they all stopped cleanly, else 1."""
        listeners = bind_listeners(self.config)
        # The push listener belongs to the processes that deliver: every child, or the
        # journal's owner alone in a split (its edges only take messages).
        push = bind_tcp(self.config.push.listen) if self.config.push is not None else None
        push_fd = push.fileno() if push is not None else None
        what = (
            f"the journal's owner and {len(self.nodes) - 1} edge processes"
            if self.split
            else f"{len(self.nodes)} children of role {self.config.server.role}"
        )
        log.info(
            "supervisor (pid %d) starting %s on %s",
            os.getpid(),
            what,
            " and ".join(_address(s) for s in listeners if s is not None),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for slot, node in enumerate(self.nodes):
                    if self.split and slot == 0:
                        owner = ChildSpec(
                            slot, node, os.getpid(), None, role="worker", push_fd=push_fd
                        )
                        tg.create_task(self._keep(owner, (push_fd,) if push_fd else ()))
                        continue
                    spec = ChildSpec(
                        slot,
                        node,
                        os.getpid(),
                        listeners.http.fileno(),
                        listeners.smtp.fileno() if listeners.smtp is not None else None,
                        listeners.health.fileno() if listeners.health is not None else None,
                        listeners.admin.fileno() if listeners.admin is not None else None,
                        role="api" if self.split else None,
                        push_fd=None if self.split else push_fd,
                    )
                    fds = listeners.fds()
                    if spec.push_fd is not None:
                        fds += (spec.push_fd,)
                    tg.create_task(self._keep(spec, fds))
        finally:
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            for proc in self.children.values():  # only after a failure of the supervisor
                _signal(proc, signal.SIGTERM)
            listeners.close()
            if push is not None:
                push.close()
        if self.error is None:
            log.info("all children stopped")
            return 0
        return 1

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop every child gracefully (what SIGTERM and SIGINT do)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("%s: stopping the children (%d running)", reason, len(self.children))
        for proc in self.children.values():
            _signal(proc, signal.SIGTERM)
        patience = self.config.server.shutdown_grace_seconds + self._stop_margin
        self._kill_timer = asyncio.get_running_loop().call_later(
            patience, self._kill_stragglers, patience
        )

    async def _keep(self, spec: ChildSpec, fds: tuple[int, ...]) -> None:
        """Run the child of one slot, again after each death, until the stop."""
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self._command(spec), stdin=subprocess.DEVNULL, pass_fds=fds, env=self._env
            )
            self.children[spec.slot] = proc
            self._policy.started(spec.slot)
            log.info("child %d started (pid %d, node %d)", spec.slot, proc.pid, spec.node)
            if self._stopping.is_set():  # the stop came while it was being started
                _signal(proc, signal.SIGTERM)
            status = await proc.wait()
            del self.children[spec.slot]
            ended = f"child {spec.slot} (pid {proc.pid}, node {spec.node}) {describe_exit(status)}"
            if self._stopping.is_set():
                # Killed by our SIGTERM: it was still starting, before its signal handlers.
                if status in (0, -signal.SIGTERM):
                    log.info("child %d stopped", spec.slot)
                else:
                    log.warning("%s while stopping", ended)
                    self.error = self.error or f"{ended} while stopping"
                return
            delay = self._policy.died(spec.slot)
            if delay is None:
                self._give_up(
                    f"{ended}: it died within {self._policy.stable_seconds:g} s of its start "
                    f"{self._policy.max_quick_deaths} times in a row; giving up (its output "
                    "above says why)"
                )
                return
            log.warning("%s; starting it again in %.1f s", ended, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    def _give_up(self, why: str) -> None:
        log.error("%s", why)
        self.error = self.error or why
        self.request_stop("giving up")

    def _kill_stragglers(self, waited: float) -> None:
        for slot, proc in self.children.items():
            log.error("child %d (pid %d) still running %.0f s after SIGTERM: killing it",
                      slot, proc.pid, waited)  # fmt: skip
            proc.kill()
        self.error = self.error or f"children still running {waited:.0f} s after SIGTERM"


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        proc.send_signal(sig)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def die_with_parent(parent: int) -> bool:
    """Have the kernel send this process SIGTERM when its parent dies (PR_SET_PDEATHSIG), so
    a supervisor killed with SIGKILL leaves no orphans: its children stop gracefully, as if
    told to. Returns False when the parent is already gone (nobody will signal then).

    Warning: the signal comes when the parent *thread* that started this process ends; the
    supervisor starts children from its event loop's thread, which lives as long as it does.
    Only on Linux; elsewhere this logs a warning and children outlive a killed supervisor.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    else:
        log.warning("no PR_SET_PDEATHSIG on %s: this child outlives a killed supervisor",
                    sys.platform)  # fmt: skip
    # The parent may have died before the prctl, and then the signal never comes.
    return os.getppid() == parent
