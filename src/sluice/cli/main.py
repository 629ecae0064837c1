"""The `sluice` command: serve, send, status, demo, sim, hash-key."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from sluice import __version__
from sluice.config import ENV_PREFIX, Config, ConfigError, hash_api_key, load
from sluice.journal.backends import split_journal
from sluice.process.listeners import Listeners
from sluice.process.supervisor import ChildSpec, Supervisor, die_with_parent, serve_command

DEFAULT_URL = "http://127.0.0.1:8080"


def _run(coro: Coroutine[Any, Any, int | None]) -> int:
    import uvloop

    try:
        return uvloop.run(coro) or 0
    except KeyboardInterrupt:
        return 130


async def _serve(args: argparse.Namespace) -> int:
    """One gateway process; with server.workers > 1, a supervisor of that many (a child of a
    supervisor is told so by --child)."""
    from sluice.journal.base import JournalBusy, JournalError
    from sluice.process.gateway import SluiceGateway

    environ = dict(os.environ)
    if args.workers is not None:
        environ[f"{ENV_PREFIX}SERVER__WORKERS"] = str(args.workers)
    try:
        config = load(args.config, environ)
    except ConfigError as exc:
        print(f"sluice: invalid configuration: {exc}", file=sys.stderr)
        return 2
    child: ChildSpec | None = args.child
    if child is None and (config.server.workers > 1 or split_journal(config)):
        return await _supervise(args, config, environ)
    name = "sluice" if child is None else f"sluice [child {child.slot}]"
    listeners = None
    push_socket = None
    if child is not None:
        if not die_with_parent(child.parent):
            print(f"{name}: the supervisor (pid {child.parent}) is gone", file=sys.stderr)
            return 1
        server = msgspec.structs.replace(
            config.server, node=child.node, role=child.role or config.server.role
        )
        config = msgspec.structs.replace(config, server=server)
        if child.http_fd is not None:  # the journal's owner in a split listens on no port
            listeners = Listeners.adopt(
                child.http_fd, child.smtp_fd, child.health_fd, child.admin_fd
            )
        if child.push_fd is not None:
            push_socket = socket.socket(fileno=child.push_fd)
    sys.setswitchinterval(config.server.gil_switch_interval_ms / 1000)
    gateway = SluiceGateway(config, listeners=listeners, push_socket=push_socket)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    try:
        await gateway.run()
    except (JournalBusy, JournalError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _supervise(args: argparse.Namespace, config: Config, environ: dict[str, str]) -> int:
    """Run server.workers gateway processes sharing the ports (see sluice.process.supervisor)."""
    supervisor = Supervisor(config, serve_command(args.config, verbose=args.verbose), env=environ)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop, sig.name)
    try:
        status = await supervisor.run()
    except OSError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    if supervisor.error is not None:
        print(f"sluice: {supervisor.error}", file=sys.stderr)
    return status


async def _send(args: argparse.Namespace) -> int:
    import aiohttp

    message: dict[str, Any] = {"channel": args.channel, "to": args.to, "body": args.body}
    if args.sender:
        message["from"] = args.sender
    if args.priority:
        message["priority"] = args.priority
    if args.callback_url:
        message["callback_url"] = args.callback_url
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    payload = {"messages": [message] * args.count} if args.count > 1 else message
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{args.url}/v1/messages", data=msgspec.json.encode(payload), headers=headers
        ) as resp,
    ):
        body = await resp.read()
    print(body.decode())
    return 0 if resp.status < 300 else 1


async def _status(args: argparse.Namespace) -> int:
    import aiohttp

    path = f"/v1/messages/{args.id}" if args.id else "/v1/channels"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{args.url}{path}", headers={"Authorization": f"Bearer {args.key}"}) as resp,
    ):
        body = await resp.read()
    try:
        print(json.dumps(json.loads(body), indent=2))
    except ValueError:
        print(body.decode(errors="replace"))
    return 0 if resp.status < 300 else 1


async def _simulate(
    name: str,
    run_from_args: Callable[[argparse.Namespace], Awaitable[None]],
    args: argparse.Namespace,
) -> int:
    """Run a simulated peer until SIGTERM or Ctrl-C; a bad option is exit status 2."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await run_from_args(args)
    except asyncio.CancelledError:
        return 0
    except (ValueError, OSError) as exc:
        print(f"sluice sim {name}: {exc}", file=sys.stderr)
        return 2
    return 0


async def _sim_webhook(args: argparse.Namespace) -> int:
    from sluice.sim.webhook_sink import run_from_args

    return await _simulate("webhook", run_from_args, args)


async def _sim_smsc(args: argparse.Namespace) -> int:
    from sluice.sim.smsc import run_from_args

    return await _simulate("smsc", run_from_args, args)


async def _sim_smtp(args: argparse.Namespace) -> int:
    from sluice.sim.smtp_sink import run_from_args

    return await _simulate("smtp", run_from_args, args)


async def _demo(args: argparse.Namespace) -> int:
    from sluice.cli.demo import run_demo

    return await run_demo(messages=args.messages, directory=args.dir, subscribers=args.subscribers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Sluice: a high-load message delivery gateway."
    )
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", default="sluice.toml", help="TOML configuration file")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="gateway processes to run on this machine, sharing its ports (overrides "
        "server.workers; more than 1 needs the postgres journal)",
    )
    # Set by the supervisor for each of its children (sluice.process.supervisor.ChildSpec as JSON).
    serve.add_argument("--child", type=ChildSpec.decode, help=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL})")
        p.add_argument("--key", required=True, help="API key (Bearer token)")

    send = commands.add_parser("send", help="submit a message over the HTTP API")
    client_options(send)
    send.add_argument("--channel", required=True)
    send.add_argument("--to", required=True)
    send.add_argument("--body", required=True)
    send.add_argument("--from", dest="sender")
    send.add_argument("--priority", choices=["urgent", "high", "normal", "bulk"])
    send.add_argument("--callback-url")
    send.add_argument("--idempotency-key")
    send.add_argument("--count", type=int, default=1, help="send the message N times in a batch")
    send.set_defaults(handler=_send)

    status = commands.add_parser("status", help="show a message's timeline, or the channels")
    client_options(status)
    status.add_argument("id", nargs="?", help="message id; omit to list channels")
    status.set_defaults(handler=_status)

    demo = commands.add_parser(
        "demo", help="run the gateway with a bundled webhook sink and deliver a batch"
    )
    demo.add_argument("--messages", type=int, default=2000, help="messages to send")
    demo.add_argument(
        "--subscribers",
        type=int,
        default=100_000,
        help="subscribers of the demo's broadcast (0: no broadcast)",
    )
    demo.add_argument("--dir", default="var/demo", help="where the demo keeps its journal")
    demo.set_defaults(handler=_demo)

    sim = commands.add_parser("sim", help="run a simulated peer")
    peers = sim.add_subparsers(dest="peer", required=True)
    webhook = peers.add_parser("webhook", help="an HTTP webhook sink")
    from sluice.sim.webhook_sink import add_arguments

    add_arguments(webhook)
    webhook.set_defaults(handler=_sim_webhook)
    smsc = peers.add_parser("smsc", help="an SMPP 3.4 SMSC")
    from sluice.sim import smsc as smsc_sim

    smsc_sim.add_arguments(smsc)
    smsc.set_defaults(handler=_sim_smsc)
    smtp = peers.add_parser("smtp", help="an SMTP sink (aiosmtpd)")
    from sluice.sim import smtp_sink

    smtp_sink.add_arguments(smtp)
    smtp.set_defaults(handler=_sim_smtp)

    subscribers = commands.add_parser("subscribers", help="manage a tenant's subscribers")
    subscriber_commands = subscribers.add_subparsers(dest="subscribers_command", required=True)
    importing = subscriber_commands.add_parser(
        "import", help="stream a CSV or NDJSON file of subscribers into the gateway"
    )
    client_options(importing)
    from sluice.cli import subscribers as subscribers_cli

    subscribers_cli.add_arguments(importing)
    importing.set_defaults(handler=subscribers_cli.import_file)

    broadcast = commands.add_parser("broadcast", help="send, watch and steer broadcasts")
    broadcast_commands = broadcast.add_subparsers(dest="broadcast_command", required=True)
    from sluice.cli import broadcasts as broadcasts_cli

    sending = broadcast_commands.add_parser(
        "send", help="create a broadcast from a JSON file and print its id"
    )
    client_options(sending)
    broadcasts_cli.add_send_arguments(sending)
    sending.set_defaults(handler=broadcasts_cli.send)
    watching = broadcast_commands.add_parser(
        "watch", help="show a broadcast's progress until it is completed or cancelled"
    )
    client_options(watching)
    broadcasts_cli.add_watch_arguments(watching)
    watching.set_defaults(handler=broadcasts_cli.watch)
    for action in broadcasts_cli.ACTION_COUNTS:
        changing = broadcast_commands.add_parser(action, help=f"{action} a broadcast")
        client_options(changing)
        broadcasts_cli.add_change_arguments(changing)
        changing.set_defaults(handler=broadcasts_cli.change, action=action)
    listing = broadcast_commands.add_parser("list", help="the broadcasts, newest first")
    client_options(listing)
    broadcasts_cli.add_list_arguments(listing)
    listing.set_defaults(handler=broadcasts_cli.list_broadcasts)

    hash_key = commands.add_parser("hash-key", help="print the config form of an API key")
    hash_key.add_argument("key")
    hash_key.set_defaults(handler=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    child: ChildSpec | None = getattr(args, "child", None)
    # A supervisor's children write to the same output: each line names its child.
    origin = f"[child {child.slot}] " if child is not None else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {origin}%(name)s: %(message)s",
    )
    if args.command == "hash-key":
        print(hash_api_key(args.key))
        return 0
    return _run(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
