"""The `sluice` command as a user runs it: real subprocesses, real config files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

import pytest
from harness import (
    KEY,
    ServeProcess,
    gateway_config,
    webhook_channel,
)

from services import free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration


async def sluice(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_refuses_an_invalid_config_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[channels.web]\ntype = "webhook"\nwidth = 0\n[channels.web.webhook]\n'
                      'url = "http://127.0.0.1:9/"\n')  # fmt: skip
    code, _, err = await sluice("serve", "--config", str(config))
    assert code == 2
    assert "channels.web.width" in err
    code, _, err = await sluice("serve", "--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert "missing.toml" in err


async def test_hash_key_prints_the_config_form() -> None:
    code, out, _ = await sluice("hash-key", "s3cret")
    assert code == 0
    assert out.strip() == "sha256:" + hashlib.sha256(b"s3cret").hexdigest()


async def test_send_then_status_over_a_running_gateway(tmp_path: Path) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        port = free_port()
        raw = gateway_config(
            tmp_path,
            {"web": webhook_channel(f"{sink.url}/hook")},
            server={"listen": f"127.0.0.1:{port}"},
        )
        config = tmp_path / "sluice.toml"
        config.write_text(dump_toml(raw))
        serve = ServeProcess(config, port, tmp_path / "serve.log")
        url = f"http://127.0.0.1:{port}"
        try:
            await serve.start()
            code, out, _ = await sluice(
                "send", "--url", url, "--key", KEY, "--channel", "web", "--to", "+15550001",
                "--body", "hello from the CLI", "--priority", "urgent",
            )  # fmt: skip
            assert code == 0, out
            [message_id] = json.loads(out)["ids"]
            await sink.wait_for(1, path="/hook")
            code, out, _ = await sluice("status", "--url", url, "--key", KEY, message_id)
            assert code == 0
            record = json.loads(out)
            assert record["id"] == message_id
            assert record["priority"] == "urgent"
            code, out, _ = await sluice("status", "--url", url, "--key", KEY)
            assert code == 0
            assert [c["name"] for c in json.loads(out)["channels"]] == ["web"]
            code, out, _ = await sluice("status", "--url", url, "--key", "wrong", message_id)
            assert code == 1
            assert "unauthorized" in out
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()


async def test_sim_webhook_refuses_a_bad_option() -> None:
    code, _, err = await sluice("sim", "webhook", "--error-ratio", "3")
    assert code == 2
    assert "error" in err and "ratio" in err


async def test_subscribers_import_streams_a_file_and_names_the_bad_lines(tmp_path: Path) -> None:
    """`sluice subscribers import` against a running gateway: requests of --batch lines, the
    bad lines reported by their line in the file, the good ones stored; importing the file
    again updates, and stores nobody twice."""
    port = free_port()
    raw = gateway_config(
        tmp_path,
        {"web": webhook_channel("http://127.0.0.1:9/hook")},
        server={"listen": f"127.0.0.1:{port}"},
    )
    config = tmp_path / "sluice.toml"
    config.write_text(dump_toml(raw))
    people = tmp_path / "people.csv"
    lines = ["id,phone,timezone,topics"]
    lines += [f"u{i},+4477009{i:05d},Europe/London,news;offers" for i in range(250)]
    lines[101] = "u100,+447700900100,Mars/Olympus,news"  # file line 102
    lines[202] = "bad id!,+447700900201,UTC,news"  # file line 203
    people.write_text("\n".join(lines) + "\n")
    serve = ServeProcess(config, port, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        await serve.start()
        args = ("subscribers", "import", str(people), "--url", url, "--key", KEY, "--batch", "40")
        code, out, err = await sluice(*args)
        assert code == 1, (out, err)  # some lines refused
        assert "248 created" in out and "2 refused" in out
        assert "line 102 (timezone)" in err
        assert "line 203 (id)" in err
        code, out, _ = await sluice(*args)
        assert "0 created, 248 updated" in out
        code, out, _ = await sluice("status", "--url", url, "--key", KEY)
        assert code == 0
        assert await serve.terminate() == 0
    finally:
        await serve.stop_quietly()


async def test_subscribers_import_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    code, _, err = await sluice("subscribers", "import", str(tmp_path / "none.csv"), "--key", KEY)
    assert code == 2
    assert "none.csv" in err and "Traceback" not in err
