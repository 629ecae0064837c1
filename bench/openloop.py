"""Open-loop HTTP load from Python: builds the C generator (bench/openloop.c) and runs streams.

    .venv/bin/python bench/openloop.py --url http://127.0.0.1:8080/healthz --rate 50 --seconds 5

The generator sends request i at t0 + i / rate whatever the server does and counts latency
from that scheduled time (see openloop.c for the rules: connection pool, own queue, timeouts,
what each count means). This module compiles it with ``gcc -O2`` into `BUILD_DIR` when the
binary is missing or older than the source, starts one process per stream, and parses its
JSON lines into `WindowStats` (one per window) and `TotalStats` (the whole run).

Examples:
    binary = build_generator()
    request = http_request("GET", "/healthz", "127.0.0.1:8080", close=True)
    spec = StreamSpec(name="healthz", port=8080, rate=20, seconds=60, request=request,
                      fresh=True)
    with start_stream(binary, spec, directory) as stream:
        ...                                  # other streams, measurements
        result = stream.result()
    print(result.total.ok, result.total.ok_ms.p99 if result.total.ok_ms else None)

Warning:
    One generator process keeps its whole queue of waiting requests as two counters, so an
    overloaded server costs it nothing but connections; --max-connections (2,000 by default)
    bounds those. At 50,000 requests/s on loopback it used 0.25 of a core on this machine
    (``--tick-us 100``: answers are collected at most every 100 µs while they stream in).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import msgspec

SOURCE = Path(__file__).with_name("openloop.c")
#: Where the compiled generator is cached (not tracked by git).
BUILD_DIR = Path(__file__).with_name(".build")
#: Seconds a stream may run past its schedule: its last requests' timeout plus a margin.
FINISH_MARGIN_SECONDS = 15.0


class GeneratorUnavailable(RuntimeError):
    """The generator could not be built (no gcc, or the compile failed)."""


class GeneratorFailed(RuntimeError):
    """A generator process exited with an error or printed no total."""


def build_generator(source: Path = SOURCE, build_dir: Path = BUILD_DIR) -> Path:
    """The generator's binary, compiled first if it is missing or older than ``source``."""
    binary = build_dir / "openloop"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise GeneratorUnavailable(
            f"gcc not found on PATH: the open-loop generator {source} is C and is compiled at "
            "run time; install it with `apt-get install -y gcc`"
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename: a concurrent run never sees half a binary.
    partial = build_dir / f"openloop.{os.getpid()}.tmp"
    done = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(partial), str(source), "-lm"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise GeneratorUnavailable(f"gcc could not compile {source}:\n{done.stderr}")
    partial.replace(binary)
    return binary


def http_request(
    method: str,
    path: str,
    host: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    close: bool = False,
) -> bytes:
    """A raw HTTP/1.1 request with Host and Content-Length (when there is a body) set, and
    ``Connection: close`` when ``close`` (the generator's --fresh mode)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Latency(msgspec.Struct, frozen=True):
    """Latency from the scheduled time, in ms (at most 0.8 % high: histogram buckets)."""

    p50: float
    p90: float
    p99: float
    max: float


class _Counts(msgspec.Struct, frozen=True, kw_only=True):
    """What the generator counts, per window or for the whole run; every request that fell
    due ends in exactly one of ok, r429, r503, other, timeouts, connect_errors and
    server_closed."""

    sent: int
    ok: int
    r429: int
    r503: int
    other: int
    timeouts: int
    connect_errors: int
    server_closed: int
    #: Refusals (429/503) that came without a Retry-After header.
    no_retry_after: int
    #: Of the timeouts, those that never left the generator's queue (no connection was free
    #: within the timeout: every connection up to --max-connections was waiting on the server).
    queued_timeouts: int
    #: Connections the server closed after an answer or while idle (not a failure).
    conn_closed: int
    #: Most requests waiting in the generator's own queue (no connection free).
    queue_max: int
    #: Most connections open at once, connecting ones included.
    open_max: int
    #: Worst delay between a request falling due and the generator noticing it: if this
    #: grows, the generator itself is late and the latencies include its delay.
    lag_max_ms: float
    ok_ms: Latency | None
    refused_ms: Latency | None

    @property
    def refused(self) -> int:
        return self.r429 + self.r503

    @property
    def failed(self) -> int:
        """Requests that ended without a 2xx, whatever the reason."""
        return self.ended - self.ok

    @property
    def ended(self) -> int:
        return (
            self.ok
            + self.refused
            + self.other
            + self.timeouts
            + self.connect_errors
            + self.server_closed
        )


class WindowStats(_Counts, frozen=True, kw_only=True):
    """One window: ``sent`` counts requests that fell due in it, the rest what ended in it."""

    window: int
    start_s: float
    end_s: float

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


class TotalStats(_Counts, frozen=True, kw_only=True):
    """The whole run, once every request has ended."""

    total: bool
    rate: float
    planned: int
    t0_unix_us: int
    elapsed_s: float
    #: CPU the generator used (user + system), in seconds.
    cpu_s: float
    #: Failed connection attempts by errno name (EMFILE, ECONNREFUSED, ETIMEDOUT, ...).
    connect_errnos: dict[str, int]

    @property
    def t0_unix(self) -> float:
        return self.t0_unix_us / 1e6


class StreamResult(msgspec.Struct, frozen=True):
    name: str
    windows: list[WindowStats]
    total: TotalStats


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One generator process: a request template sent at a fixed rate."""

    name: str
    port: int
    rate: float
    seconds: float
    request: bytes
    host: str = "127.0.0.1"
    fresh: bool = False
    max_connections: int = 2000
    timeout_seconds: float = 10.0
    window_seconds: float = 5.0
    #: Append "<first id> <scheduled µs> <answered µs>" per 2xx to this file.
    record: Path | None = None

    def command(self, binary: Path, request_file: Path) -> list[str]:
        command = [
            str(binary),
            f"--host={self.host}",
            f"--port={self.port}",
            f"--rate={self.rate:g}",
            f"--duration={self.seconds:g}",
            f"--request={request_file}",
            f"--max-connections={self.max_connections}",
            f"--timeout={self.timeout_seconds:g}",
            f"--window={self.window_seconds:g}",
        ]
        if self.fresh:
            command.append("--fresh")
        if self.record is not None:
            command.append(f"--record={self.record}")
        return command


_window_decoder = msgspec.json.Decoder(WindowStats)
_total_decoder = msgspec.json.Decoder(TotalStats)


def parse_output(name: str, lines: list[bytes]) -> StreamResult:
    """The generator's stdout, one JSON object a line, as a `StreamResult`."""
    windows: list[WindowStats] = []
    total: TotalStats | None = None
    for line in lines:
        if not line.strip():
            continue
        if line.startswith(b'{"total"'):
            total = _total_decoder.decode(line)
        else:
            windows.append(_window_decoder.decode(line))
    if total is None:
        raise GeneratorFailed(f"stream {name!r}: the generator printed no total line")
    return StreamResult(name, windows, total)


class RunningStream:
    """A started generator process; `result` waits for it. As a context manager it stops the
    process (SIGTERM: no new requests, the outstanding ones end) if it is still running."""

    def __init__(self, spec: StreamSpec, proc: subprocess.Popen[bytes], output: Path) -> None:
        self.spec = spec
        self._proc = proc
        self._output = output

    def __enter__(self) -> RunningStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(self.spec.timeout_seconds + FINISH_MARGIN_SECONDS)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def result(self) -> StreamResult:
        """Wait for the run to end (its schedule, then up to its timeout) and parse it."""
        limit = self.spec.seconds + self.spec.timeout_seconds + FINISH_MARGIN_SECONDS
        try:
            code = self._proc.wait(limit)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise GeneratorFailed(
                f"stream {self.spec.name!r} was still running {limit:g} s after it started"
            ) from None
        stderr = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        if code != 0:
            raise GeneratorFailed(f"stream {self.spec.name!r} exited with {code}: {stderr}")
        return parse_output(self.spec.name, self._output.read_bytes().splitlines())


def start_stream(binary: Path, spec: StreamSpec, directory: Path) -> RunningStream:
    """Start one generator; its request template and output are files in ``directory``
    (output to a file, not a pipe, so the generator never waits on a slow reader)."""
    request_file = directory / f"{spec.name}.http"
    request_file.write_bytes(spec.request)
    output = directory / f"{spec.name}.jsonl"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            spec.command(binary, request_file), stdout=out, stderr=subprocess.PIPE
        )
    return RunningStream(spec, proc, output)


class RecordedAccept(msgspec.Struct, frozen=True):
    """One 2xx of a recorded stream: the first message id of its answer, when the request
    was scheduled and when its answer was complete (Unix µs)."""

    id: str
    scheduled_us: int
    answered_us: int


def read_record(path: Path) -> list[RecordedAccept]:
    """The lines a generator appended with --record."""
    if not path.exists():
        return []
    accepts = []
    for line in path.read_text().splitlines():
        message_id, scheduled, answered = line.split()
        accepts.append(RecordedAccept(message_id, int(scheduled), int(answered)))
    return accepts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://host:port/path (IPv4 host)")
    parser.add_argument("--rate", type=float, required=True, help="requests/s")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="", help="request body (Content-Type: JSON)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--fresh", action="store_true", help="a new connection per request")
    parser.add_argument("--max-connections", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--window", type=float, default=5)
    args = parser.parse_args()
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        parser.error(f"--url must be http://host:port/path, got {args.url}")
    headers: dict[str, str] = {}
    for line in args.header:
        name, sep, value = line.partition(":")
        if not sep:
            parser.error(f"--header must be 'Name: value', got {line!r}")
        headers[name.strip()] = value.strip()
    body = args.body.encode()
    if body:
        headers.setdefault("Content-Type", "application/json")
    port = url.port or 80
    spec = StreamSpec(
        name="stream",
        host=url.hostname,
        port=port,
        rate=args.rate,
        seconds=args.seconds,
        request=http_request(
            args.method,
            url.path or "/",
            f"{url.hostname}:{port}",
            headers,
            body,
            close=args.fresh,
        ),
        fresh=args.fresh,
        max_connections=args.max_connections,
        timeout_seconds=args.timeout,
        window_seconds=args.window,
    )
    try:
        binary = build_generator()
    except GeneratorUnavailable as error:
        sys.exit(str(error))
    # The command line shows the results as they come: run the generator in the foreground.
    request_file = BUILD_DIR / "cli-request.http"
    request_file.write_bytes(spec.request)
    sys.exit(subprocess.run(spec.command(binary, request_file), check=False).returncode)


if __name__ == "__main__":
    main()
