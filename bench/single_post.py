"""Single-message POSTs: requests/s and latency of `POST /v1/messages` with one message each.

    .venv/bin/python bench/single_post.py --connections 64 --seconds 10 --synchronous full

The gateway runs as a real `sluice serve` process (SQLite) with its channel paused, so only
ingest is measured: every request is parsed, authenticated, admitted and committed (group
commit) before its 202. The client is wrk (one thread, a Lua script written at run time) in
its own process. The goal printed beside the figure is 8,000 requests/s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from common import KEY, cpu_seconds, gateway, get_json, log_problems, workdir

GOAL_REQUESTS_PER_SECOND = 8_000
WRK = "/usr/bin/wrk"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY_LINE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)


def lua_script(body: bytes) -> str:
    # A Lua long string takes the JSON as it is; the level of `=` just has to not occur in it.
    level = "=" * 4
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [{level}[{body.decode()}]{level}]\n"
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def run_wrk(script: Path, url: str, threads: int, connections: int, seconds: float) -> str:
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, total requests, non-2xx count, socket errors and latency percentiles (ms)."""
    figures: dict[str, float] = {}
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{output}")
    figures["rps"] = float(match.group(1))
    match = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.MULTILINE)
    if match is not None:
        figures["requests"] = int(match.group(1))
        figures["elapsed_s"] = float(match.group(2)) * _UNITS[match.group(3)] / 1000
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    figures["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    figures["socket_errors"] = sum(int(g) for g in match.groups()) if match else 0
    for percent, value, unit in _LATENCY_LINE.findall(output):
        figures[f"p{float(percent):g}"] = float(value) * _UNITS[unit]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (%(default)s)")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--show-wrk", action="store_true", help="print wrk's own output too")
    args = parser.parse_args()
    if not Path(WRK).exists():
        sys.exit(f"{WRK} not found: install it with `apt-get install -y wrk` (Debian's package)")
    body = msgspec.json.encode(
        {"channel": "web", "to": "+15550000001", "body": "Benchmark message number 1"}
    )
    channels = {
        "web": {"type": "webhook", "paused": True, "webhook": {"url": "http://127.0.0.1:9/unused"}}
    }
    with workdir() as directory:
        script = directory / "post.lua"
        script.write_text(lua_script(body))
        with gateway(directory, channels, args.synchronous) as (proc, base):
            url = f"{base}/v1/messages"
            warm = parse_wrk(run_wrk(script, url, args.threads, args.connections, 1))
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            output = run_wrk(script, url, args.threads, args.connections, args.seconds)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            channel = get_json(f"{base}/v1/channels", auth=True)["channels"][0]
        problems = log_problems(directory)
    if args.show_wrk:
        print(output)
    figures = parse_wrk(output)
    requests = int(figures.get("requests", figures["rps"] * args.seconds))
    ok = requests - int(figures["non_2xx"])
    verdict = "meets" if figures["rps"] >= GOAL_REQUESTS_PER_SECOND else "below"
    print(
        f"connections={args.connections} wrk-threads={args.threads} "
        f"synchronous={args.synchronous} seconds={args.seconds:g}"
    )
    print(
        f"{requests:,} requests in {figures.get('elapsed_s', elapsed):.1f} s: "
        f"{figures['rps']:,.0f} requests/s "
        f"(goal >= {GOAL_REQUESTS_PER_SECOND:,}: {verdict})"
    )
    print(
        "latency "
        + ", ".join(
            f"{name} {figures[name]:.2f} ms"
            for name in ("p50", "p75", "p90", "p99")
            if name in figures
        )
    )
    print(
        f"non-2xx responses {int(figures['non_2xx'])}, socket errors "
        f"{int(figures['socket_errors'])}"
    )
    print(
        f"server CPU {cpu:.1f} s = {cpu / max(ok, 1) * 1e6:.0f} µs per accepted request "
        f"({cpu / elapsed:.2f} cores)"
    )
    expected = ok + int(warm.get("requests", 0)) - int(warm["non_2xx"])
    # wrk does not count the requests still in flight at its deadline (up to --connections per
    # run), yet the gateway may have committed them, so the journal can hold slightly more.
    print(
        f"journal pending for the channel: {channel['pending']:,} "
        f"(2xx counted by wrk incl. 1 s warm-up: {expected:,}; "
        f"up to {2 * args.connections} more were cut off in flight)"
    )
    for line in problems:
        print(f"serve.log: {line}")


if __name__ == "__main__":
    main()
