"""Shared pieces of the benchmarks: real `sluice serve` and `sluice sim webhook` processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from sluice.config import hash_api_key

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def to_toml(raw: dict[str, Any], prefix: str = "") -> str:
    scalars, tables = [], []
    for key, value in raw.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {msgspec.json.encode(value).decode()}")
    out = f"[{prefix}]\n" if prefix and scalars else ""
    out += "".join(line + "\n" for line in scalars)
    for key, value in tables:
        out += to_toml(value, f"{prefix}.{key}" if prefix else key)
    return out


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as path:
        yield Path(path)


@contextlib.contextmanager
def gateway(
    directory: Path, channels: dict[str, Any], synchronous: str = "full", **sections: Any
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    raw: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "journal": {"path": str(directory / "journal.db"), "synchronous": synchronous},
        "limits": {"max_backlog": 100_000_000},
        "channels": channels,
        "tenants": {"bench": {"api_keys": [hash_api_key(KEY)]}},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    config = directory / "sluice.toml"
    config.write_text(to_toml(raw))
    log = open(directory / "serve.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz")
        yield proc, base
    finally:
        stop(proc)


@contextlib.contextmanager
def sink(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "sim", "webhook", "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/_sink/stats")
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def batch_body(n: int, channel: str = "web", priority: str = "normal") -> bytes:
    return msgspec.json.encode({
        "messages": [
            {"channel": channel, "to": f"+1555{i:07d}", "body": f"Benchmark message number {i}",
             "priority": priority}
            for i in range(n)
        ]
    })


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
