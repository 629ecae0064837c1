"""`sluice broadcast send|watch|pause|resume|cancel|list`: the gateway's broadcast endpoints
(`/v1/broadcasts`) from the command line.

`watch` asks for the broadcast once a second and draws what the gateway counted: messages
finished (sent, delivered, failed, expired, cancelled) out of those finished plus those still
ahead, the rate they are finished at, the ETA, and the recipients suppressed by reason. It
ends, with a summary line, once the broadcast is completed or cancelled. Without a terminal
(or with --plain) it prints one line a poll instead of the bar, for logs and scripts.

Exit status: 0 done; 1 the gateway refused or could not be reached (an unknown id, a wrong
key, a refused broadcast); 2 the broadcast file could not be read or is not JSON.

Examples:
    sluice broadcast send storm.json --key $KEY --watch
    sluice broadcast watch 0HZ3W0M8KX2R0 --key $KEY --url http://gw:8080
    sluice broadcast pause 0HZ3W0M8KX2R0 --key $KEY
    sluice broadcast list --key $KEY
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

import msgspec
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from sluice.model import parse_id

#: How long one request may take before the command gives up on the gateway.
REQUEST_TIMEOUT_SECONDS = 30.0
#: The longest wait a poll refused for load (429, 503) is put off by.
MAX_RETRY_AFTER_SECONDS = 30.0
#: Phases after which nothing changes any more (audience/progress.py).
FINAL_PHASES = frozenset({"completed", "cancelled"})
#: The states a message is finished in, in the order they are shown.
DONE_STATES = ("sent", "delivered", "failed", "expired", "cancelled")
#: What each action's answer counts (broadcast_api.py).
ACTION_COUNTS = {"pause": "held", "resume": "released", "cancel": "cancelled"}


class BroadcastFailed(Exception):
    """The command cannot go on (the gateway refused, is unreachable); the message says why."""


class GatewayBusy(BroadcastFailed):
    """The gateway refused a request for load; `retry_after` is the wait it asked for."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(BroadcastFailed):
    """The gateway knows nothing at the path asked for (404)."""


def unknown(ident: str) -> BroadcastFailed:
    return BroadcastFailed(
        f"no broadcast {ident!r} for this API key's tenant; `sluice broadcast list` shows the ids"
    )


def item_path(ident: str, action: str = "") -> str:
    """The path of a broadcast (or of an action on it). The id is checked first: the gateway
    decodes a path before routing it, so text such as `ID/cancel` would reach another
    endpoint."""
    try:
        parse_id(ident)
    except ValueError:
        raise BroadcastFailed(
            f"{ident!r} is not a broadcast id (13 characters, as `sluice broadcast send` and "
            "`sluice broadcast list` print them)"
        ) from None
    path = f"/v1/broadcasts/{ident}"
    return f"{path}/{action}" if action else path


class BroadcastClient:
    """The broadcast endpoints of one gateway, for one command.

    Examples:
        async with BroadcastClient("http://127.0.0.1:8080", key) as client:
            view = await client.call("GET", "/v1/broadcasts/0HZ3W0M8KX2R0")
    """

    def __init__(self, url: str, key: str) -> None:
        self._url = url.rstrip("/")
        self._key = key
        self._session: Any = None
        #: Whether the last answer was a replay of an earlier request (its Idempotency-Key).
        self.replayed = False

    async def __aenter__(self) -> BroadcastClient:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The decoded JSON answer of a 2xx; BroadcastFailed naming the cause otherwise."""
        import aiohttp

        sent = {"Authorization": f"Bearer {self._key}", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        url = self._url + path
        try:
            async with self._session.request(method, url, data=body, headers=sent) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
                self.replayed = resp.headers.get("Idempotent-Replayed") == "true"
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise BroadcastFailed(
                f"cannot reach the gateway at {self._url}: {exc or 'no answer in time'}; "
                "is it running, and is --url right?"
            ) from None
        try:
            answer = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError:
            raise BroadcastFailed(
                f"{method} {url} answered {status} with something other than JSON: "
                f"{raw[:200]!r}; is --url a Sluice gateway?"
            ) from None
        if 200 <= status < 300 and isinstance(answer, dict):
            return answer
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        code, message = error.get("code", "?"), error.get("message", "")
        if status == 401:
            raise BroadcastFailed(f"the gateway refused the API key (401 {code}): check --key")
        if status == 404:
            raise NotFound(f"{method} {path}: 404 {code}")
        field = f", {error['field']}" if error.get("field") else ""
        text = f"the gateway refused {method} {path} ({status} {code}{field}): {message}"
        if status in (429, 503):
            raise GatewayBusy(text, _retry_after(retry_after))
        raise BroadcastFailed(text)


def _retry_after(value: str | None) -> float:
    """Seconds a Retry-After asks for (an HTTP date, or nonsense, counts as one)."""
    try:
        return min(MAX_RETRY_AFTER_SECONDS, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


# ------------------------------------------------------------------------------ rendering


def done_of(view: dict[str, Any]) -> int:
    """Messages of the broadcast finished, whatever their outcome."""
    counts = view.get("counts", {})
    return sum(int(counts.get(state, 0)) for state in DONE_STATES)


def total_of(view: dict[str, Any]) -> int:
    """Messages finished plus those still ahead (queued, in flight, members still to read)."""
    return done_of(view) + int(view.get("remaining", 0))


def eta_text(seconds: float | None) -> str:
    """`1:02:03` or `4:05`; `-` when the gateway cannot tell (paused, nothing finished yet)."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def suppressed_text(view: dict[str, Any]) -> str:
    """`suppressed 4: duplicate 1, opted_out 3`, or `suppressed 0`."""
    suppressed: dict[str, int] = view.get("suppressed", {})
    total = sum(suppressed.values())
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in suppressed.items())
    return f"suppressed {total:,}: {reasons}" if reasons else "suppressed 0"


def progress_line(view: dict[str, Any]) -> str:
    """One poll as a line of text (the form --plain prints)."""
    return (
        f"{view['id']} {view['phase']}: {done_of(view):,}/{total_of(view):,} done, "
        f"{float(view.get('rate', 0.0)):,.1f} msgs/s, ETA {eta_text(view.get('eta_seconds'))}; "
        f"{suppressed_text(view)}"
    )


def summary_line(view: dict[str, Any]) -> str:
    """The line `watch` ends with: every finished state's count and the suppressions."""
    counts = view.get("counts", {})
    states = ", ".join(f"{int(counts.get(state, 0)):,} {state}" for state in DONE_STATES)
    return f"broadcast {view['id']} {view['phase']}: {states}; {suppressed_text(view)}"


class Display(Protocol):
    """Where `watch` shows each poll."""

    def __enter__(self) -> Display: ...

    def __exit__(self, *exc: object) -> None: ...

    def show(self, view: dict[str, Any]) -> None: ...


class PlainDisplay:
    """One line a poll, for output that is not a terminal."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, view: dict[str, Any]) -> None:
        print(progress_line(view), file=self._out, flush=True)


class _BroadcastProgress(Progress):
    """A progress bar with a line under it: the suppressions by reason."""

    note = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.note:
            yield Text(self.note, style="dim")


class BarDisplay:
    """A live bar on a terminal, redrawn at each poll (no refresh thread: nothing changes in
    between)."""

    def __init__(self, console: Console) -> None:
        self._progress = _BroadcastProgress(
            TextColumn("[bold]{task.fields[phase]:<10}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} msgs/s"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            auto_refresh=False,
            transient=False,
        )
        self._task = self._progress.add_task("broadcast", total=None, phase="", rate="0.0", eta="-")

    def __enter__(self) -> BarDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def show(self, view: dict[str, Any]) -> None:
        self._progress.note = suppressed_text(view)
        self._progress.update(
            self._task,
            completed=done_of(view),
            total=total_of(view) or None,
            phase=view["phase"],
            rate=f"{float(view.get('rate', 0.0)):,.1f}",
            eta=eta_text(view.get("eta_seconds")),
        )
        self._progress.refresh()


def display_for(args: argparse.Namespace) -> Display:
    if args.plain or not sys.stdout.isatty():
        return PlainDisplay(sys.stdout)
    return BarDisplay(Console(file=sys.stdout))


# ------------------------------------------------------------------------------- commands


async def watch_broadcast(
    client: BroadcastClient, ident: str, interval: float, display: Display
) -> dict[str, Any]:
    """Poll the broadcast until it is completed or cancelled; its last view."""
    with display:
        while True:
            path = item_path(ident)
            try:
                view = await client.call("GET", path)
            except NotFound:
                raise unknown(ident) from None
            except GatewayBusy as busy:  # a watch outlasts a spell of shedding
                await asyncio.sleep(max(interval, busy.retry_after))
                continue
            display.show(view)
            if view["phase"] in FINAL_PHASES:
                return view
            await asyncio.sleep(interval)


def _failed(exc: BaseException) -> int:
    print(f"sluice: {exc}", file=sys.stderr)
    return 1


def _read_broadcast(path: Path) -> bytes:
    """The file's bytes once they are known to be a JSON object (BroadcastFailed otherwise)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BroadcastFailed(f"cannot read the broadcast: {exc}") from None
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BroadcastFailed(f"{path} is not JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise BroadcastFailed(f"{path} holds a JSON {type(decoded).__name__}, not an object")
    return raw


async def send(args: argparse.Namespace) -> int:
    """POST the file as a broadcast, print its id; with --watch, watch it to its end."""
    try:
        raw = await asyncio.to_thread(_read_broadcast, Path(args.file))
    except BroadcastFailed as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    try:
        async with BroadcastClient(args.url, args.key) as client:
            view = await client.call("POST", "/v1/broadcasts", raw, headers)
            if client.replayed:
                print(
                    "sluice: this Idempotency-Key was used before: the broadcast is the one "
                    "it created then",
                    file=sys.stderr,
                )
            print(view["id"], flush=True)
            if not args.watch:
                return 0
            final = await watch_broadcast(client, view["id"], args.interval, display_for(args))
    except BroadcastFailed as exc:
        return _failed(exc)
    print(summary_line(final))
    return 0


async def watch(args: argparse.Namespace) -> int:
    """Show the broadcast's progress until it is completed or cancelled."""
    try:
        async with BroadcastClient(args.url, args.key) as client:
            final = await watch_broadcast(client, args.id, args.interval, display_for(args))
    except BroadcastFailed as exc:
        return _failed(exc)
    print(summary_line(final))
    return 0


async def change(args: argparse.Namespace) -> int:
    """Pause, resume or cancel the broadcast; print what that did to its messages."""
    action: str = args.action
    try:
        async with BroadcastClient(args.url, args.key) as client:
            path = item_path(args.id, action)
            view = await client.call("POST", path)
    except NotFound:
        return _failed(unknown(args.id))
    except BroadcastFailed as exc:
        return _failed(exc)
    counts = view.get("counts", {})
    states = ", ".join(f"{int(n):,} {state}" for state, n in counts.items())
    print(
        f"broadcast {view['id']}: {int(view.get(ACTION_COUNTS[action], 0)):,} messages "
        f"{ACTION_COUNTS[action]}; phase {view['phase']} ({states})"
    )
    return 0


async def list_broadcasts(args: argparse.Namespace) -> int:
    """The tenant's broadcasts, newest first, one line each, up to --limit."""
    lines: list[str] = []
    try:
        async with BroadcastClient(args.url, args.key) as client:
            path = "/v1/broadcasts"
            while len(lines) < args.limit:
                page = await client.call("GET", path)
                for view in page.get("broadcasts", [])[: args.limit - len(lines)]:
                    lines.append(
                        f"{view['id']}  {view['phase']:<10} {int(view['planned']):>10,} planned "
                        f"{done_of(view):>10,} done  {view.get('created_at') or '-'}"
                    )
                if not page.get("next"):
                    break
                path = f"/v1/broadcasts?before={page['next']}"
    except BroadcastFailed as exc:
        return _failed(exc)
    for line in lines:
        print(line)
    return 0


# ------------------------------------------------------------------------------ arguments


def _interval(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 3600:
        raise argparse.ArgumentTypeError("--interval takes 0.01 to 3,600 seconds")
    return value


def _limit(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--limit takes 1 or more broadcasts")
    return value


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between polls (default 1)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="a line a poll instead of the bar (also without a TTY)"
    )


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a JSON file: the body of POST /v1/broadcasts")
    parser.add_argument("--idempotency-key", help="sending again with it creates nothing new")
    parser.add_argument("--watch", action="store_true", help="then watch it to its end")
    _watch_options(parser)


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the broadcast's id (as `send` or `list` print it)")
    _watch_options(parser)


def add_change_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the broadcast's id")


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_limit, default=100, help="broadcasts to list at most (default 100)"
    )
