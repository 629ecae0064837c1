"""The email transport against the SMTP sink: mapping, outcomes, pooling, TLS, AUTH and MX."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord

from services import free_port
from sluice.config import EmailConfig
from sluice.model import Message, Outcome, format_id
from sluice.sim.smtp_sink import SmtpSink
from sluice.transports.email import (
    EmailTransport,
    build_envelope,
    classify,
    parse_nameserver,
    queue_id,
    reply_text,
)

pytestmark = pytest.mark.integration

MakeSink = Callable[..., Awaitable[SmtpSink]]
MakeTransport = Callable[..., Awaitable[EmailTransport]]

_parser = email.parser.BytesParser(policy=email.policy.default)


def mail(n: int = 1, to: str = "bob@example.test", body: str = "Hello Bob", **kw: Any) -> Message:
    return Message(n, "acme", "mail", to, body, **kw)


async def eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"waited {within:g} s for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    transports: list[EmailTransport] = []

    async def make(width: int = 4, **config: Any) -> EmailTransport:
        config.setdefault("connect_timeout_seconds", 2.0)
        config.setdefault("command_timeout_seconds", 5.0)
        config.setdefault("helo_name", "sluice.test")
        transport = EmailTransport("mail", EmailConfig(**config), width)
        await transport.start()
        transports.append(transport)
        return transport

    yield make
    for transport in transports:
        await transport.close()


def via(sink: SmtpSink, **config: Any) -> dict[str, Any]:
    """Config sending everything to ``sink`` as the relay, in clear unless told otherwise."""
    return {"relay_host": "127.0.0.1", "relay_port": sink.port, "starttls": "never"} | config


# -- pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(250, Outcome.SENT), (251, Outcome.SENT), (421, Outcome.TRANSIENT),
     (451, Outcome.TRANSIENT), (452, Outcome.TRANSIENT), (550, Outcome.PERMANENT),
     (554, Outcome.PERMANENT), (354, Outcome.TRANSIENT), (-1, Outcome.TRANSIENT)],
)  # fmt: skip
def test_reply_codes_map_to_outcomes(code: int, outcome: Outcome) -> None:
    assert classify(code) is outcome


def test_queue_ids_and_reply_text() -> None:
    assert queue_id("2.0.0 Ok: queued as ABC123") == "ABC123"
    assert queue_id("OK id=1qX8k2-0004bI-Sa") == "1qX8k2-0004bI-Sa"
    assert queue_id("2.0.0 OK <4Fabc.x@mx> queued as <4Fabc.x@mx>.") == "4Fabc.x@mx"
    assert queue_id("2.0.0 Ok") is None
    assert reply_text(451, "4.7.1 Greylisted\nplease retry") == "451 4.7.1 Greylisted please retry"
    assert reply_text(250, "") == "250"


def test_nameservers_parse_with_and_without_port() -> None:
    assert parse_nameserver("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ValueError, match=r"email\.nameservers: expected an IP address"):
        parse_nameserver("dns.example:53")
    with pytest.raises(ValueError, match=r"port must be 1\.\.65535"):
        parse_nameserver("127.0.0.1:0")


def test_envelopes_say_what_the_server_must_support() -> None:
    plain = build_envelope(mail(body="héllo"), "noreply@sluice.test")
    assert plain.sender == "noreply@sluice.test" and plain.domain == "example.test"
    assert not plain.eight_bit and not plain.smtputf8  # the text goes quoted-printable
    raw = mail(body="Subject: x\r\n\r\nhéllo\r\n", metadata={"format": "rfc5322"})
    assert build_envelope(raw, "a@b.test").eight_bit
    assert not build_envelope(raw, "a@b.test").smtputf8
    raw_header = mail(body="Subject: Grüße\r\n\r\nhi\r\n", metadata={"format": "rfc5322"})
    assert build_envelope(raw_header, "a@b.test").smtputf8
    assert build_envelope(mail(to="jörg@example.test"), "a@b.test").smtputf8
    with pytest.raises(ValueError, match="no @domain"):
        build_envelope(mail(to="+447700900123"), "a@b.test")
    with pytest.raises(ValueError, match="not an email address"):
        build_envelope(mail(to="bob@x.test\r\nRCPT TO:<eve@x.test>"), "a@b.test")
    with pytest.raises(ValueError, match="metadata format 'html' is not supported"):
        build_envelope(mail(metadata={"format": "html"}), "a@b.test")
    with pytest.raises(ValueError, match="cannot build the message"):
        build_envelope(mail(metadata={"subject": "two\nlines"}), "a@b.test")


# -- delivery through a relay ----------------------------------------------------------------


async def test_plain_text_message(make_smtp_sink: MakeSink, make_transport: MakeTransport) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(**via(sink, default_from="noreply@sluice.test"))
    assert transport.send_soon(mail(), lambda result: None) is False
    result = await transport.send(mail(7, body="Hi Bøb,\n.see you", metadata={"subject": "Grüße"}))
    [received] = sink.messages()
    assert result.outcome is Outcome.SENT
    assert result.provider_id == received.queue_id
    assert result.detail == f"250 2.0.0 Ok: queued as {received.queue_id}"
    assert received.mail_from == "noreply@sluice.test"
    assert received.rcpt_tos == ("bob@example.test",)
    assert received.data.isascii() and b"\r\n" in received.data
    parsed = _parser.parsebytes(received.data)
    assert parsed["From"] == "noreply@sluice.test"
    assert parsed["To"] == "bob@example.test"
    assert parsed["Subject"] == "Grüße"
    assert parsed["Message-ID"] == f"<{format_id(7)}@sluice>"
    assert parsed["Date"].datetime is not None
    assert parsed.get_content_type() == "text/plain"
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content().replace("\r\n", "\n") == "Hi Bøb,\n.see you\n"

    await transport.send(mail(8, sender="shop@acme.test"))
    assert sink.messages()[1].mail_from == "shop@acme.test"
    assert _parser.parsebytes(sink.messages()[1].data)["From"] == "shop@acme.test"


async def test_rfc5322_message_goes_as_it_is(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(**via(sink))
    body = (
        "From: Shop <shop@acme.test>\r\nTo: bob@example.test\r\nSubject: Grüße\r\n"
        "X-Custom: kept\r\n\r\nHéllo\r\n.leading dot\r\n"
    )
    metadata = {"format": "rfc5322"}
    result = await transport.send(mail(body=body, sender="shop@acme.test", metadata=metadata))
    assert result.outcome is Outcome.SENT, result.detail
    [received] = sink.messages()
    assert received.data == body.encode()
    assert received.mail_from == "shop@acme.test"
    assert "SMTPUTF8" in received.mail_options and "BODY=8BITMIME" in received.mail_options

    ascii_body = "Subject: plain\n\nbare LF lines\n"  # the client sends CRLF
    await transport.send(mail(body=ascii_body, metadata=metadata))
    received = sink.messages()[1]
    assert received.data == b"Subject: plain\r\n\r\nbare LF lines\r\n"
    assert not {"SMTPUTF8", "BODY=8BITMIME"} & set(received.mail_options)


async def test_non_ascii_needs_8bitmime(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(eight_bit_mime=False, smtputf8=False)
    transport = await make_transport(**via(sink))
    body = "Subject: x\r\n\r\nHéllo\r\n"
    result = await transport.send(mail(body=body, metadata={"format": "rfc5322"}))
    assert result.outcome is Outcome.PERMANENT
    assert result.detail is not None and "does not offer 8BITMIME" in result.detail
    result = await transport.send(mail(body="Subject: Grüße\r\n\r\nhi\r\n",
                                       metadata={"format": "rfc5322"}))  # fmt: skip
    assert result.outcome is Outcome.PERMANENT
    assert result.detail is not None and "does not offer SMTPUTF8" in result.detail
    assert (await transport.send(mail(body="Héllo"))).outcome is Outcome.SENT  # built: 7-bit
    assert len(sink.messages()) == 1


async def test_refusals_keep_the_servers_reply(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(
        reject_recipients={
            "nobody@example.test": (550, "5.1.1 No such user"),
            "@greylist.test": (451, "4.7.1 Try again later"),
        }
    )
    transport = await make_transport(**via(sink))
    grey = await transport.send(mail(to="bob@greylist.test"))
    assert (grey.outcome, grey.detail) == (Outcome.TRANSIENT, "451 4.7.1 Try again later")
    assert grey.attempted and grey.provider_id is None
    gone = await transport.send(mail(to="nobody@example.test"))
    assert (gone.outcome, gone.detail) == (Outcome.PERMANENT, "550 5.1.1 No such user")
    assert (await transport.send(mail())).outcome is Outcome.SENT
    assert sink.stats().connections == 1  # refusals leave the connection usable


async def test_refusals_at_the_end_of_data(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    temp = await make_transport(**via(await make_smtp_sink(temp_fail_ratio=1.0)))
    result = await temp.send(mail())
    assert result.outcome is Outcome.TRANSIENT
    assert result.detail == "451 4.3.0 Simulated temporary failure (temp_fail_ratio)"
    perm = await make_transport(**via(await make_smtp_sink(perm_fail_ratio=1.0)))
    result = await perm.send(mail())
    assert result.outcome is Outcome.PERMANENT
    assert result.detail == "554 5.3.0 Simulated permanent failure (perm_fail_ratio)"
    big = await make_transport(**via(await make_smtp_sink(max_message_size=50)))
    result = await big.send(mail(body="x" * 200))
    assert result.outcome is Outcome.PERMANENT  # refused at MAIL FROM by the SIZE it declared
    assert result.detail is not None and result.detail.startswith("552 ")


async def test_connection_refused_is_not_an_attempt(make_transport: MakeTransport) -> None:
    transport = await make_transport(relay_host="127.0.0.1", relay_port=free_port())
    result = await transport.send(mail())
    assert result.outcome is Outcome.TRANSIENT
    assert result.attempted is False
    assert result.detail is not None and "connection refused" in result.detail
    assert transport.open_connections == 0


async def test_connections_are_reused(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(**via(sink))
    for n in range(5):
        assert (await transport.send(mail(n))).outcome is Outcome.SENT
    assert sink.stats().connections == 1
    assert sink.stats().messages == 5

    replaced = await make_smtp_sink()
    transport = await make_transport(**via(replaced, max_messages_per_connection=2))
    for n in range(5):
        assert (await transport.send(mail(n))).outcome is Outcome.SENT
    assert replaced.stats().connections == 3


async def test_concurrent_sends_open_at_most_width_connections(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(width=2, **via(sink))
    results = await asyncio.gather(*(transport.send(mail(n)) for n in range(12)))
    assert [r.outcome for r in results] == [Outcome.SENT] * 12
    assert len({r.provider_id for r in results}) == 12
    stats = sink.stats()
    assert stats.messages == 12
    assert stats.max_active_connections <= 2 and stats.connections <= 2
    assert transport.open_connections <= 2


async def test_a_full_pool_closes_an_idle_connection_elsewhere(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    first = await make_smtp_sink()
    try:  # the same port on another loopback address: a second destination
        second = await make_smtp_sink(host="127.0.0.3", port=first.port)
    except OSError as exc:
        pytest.skip(f"no second loopback address here: {exc}")
    transport = await make_transport(width=1, starttls="never", mx_port=first.port,
                                     nameservers=["127.0.0.1:9"])  # fmt: skip
    # address literals route without DNS: one destination per loopback address
    assert (await transport.send(mail(to="a@[127.0.0.1]"))).outcome is Outcome.SENT
    assert first.stats().active_connections == 1
    result = await transport.send(mail(to="b@[127.0.0.3]"))
    assert result.outcome is Outcome.SENT, result.detail
    assert second.messages()[0].rcpt_tos == ("b@[127.0.0.3]",)
    await eventually(lambda: first.stats().active_connections == 0, "the idle one to close")
    assert first.stats().replies.get(221) == 1
    assert transport.open_connections == 1


async def test_a_421_drops_the_connection(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(reject_recipients={"@busy.test": (421, "4.7.0 Too busy")})
    transport = await make_transport(**via(sink))
    busy = await transport.send(mail(to="bob@busy.test"))
    assert (busy.outcome, busy.detail) == (Outcome.TRANSIENT, "421 4.7.0 Too busy")
    assert transport.open_connections == 0
    assert (await transport.send(mail())).outcome is Outcome.SENT
    assert sink.stats().connections == 2


async def test_a_connection_the_server_dropped_is_replaced(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(session_timeout_seconds=0.2)
    transport = await make_transport(**via(sink))
    assert (await transport.send(mail(1))).outcome is Outcome.SENT
    await eventually(lambda: sink.stats().active_connections == 0, "the sink to time out")
    result = await transport.send(mail(2))
    assert result.outcome is Outcome.SENT, result.detail
    assert sink.stats().connections == 2
    assert transport.open_connections == 1


async def test_a_slow_reply_times_out_and_the_connection_is_replaced(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(data_latency_ms=2000)
    transport = await make_transport(**via(sink, command_timeout_seconds=0.2))
    result = await transport.send(mail())
    assert result.outcome is Outcome.TRANSIENT and result.attempted
    assert result.detail == f"127.0.0.1:{sink.port}: no reply to DATA within 0.2 s"
    assert transport.open_connections == 0


async def test_a_cancelled_send_gives_its_connection_back(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    slow = await make_smtp_sink(data_latency_ms=10_000)
    transport = await make_transport(width=1, **via(slow))
    sending = asyncio.create_task(transport.send(mail(1)))
    await slow.wait_for(messages=1, timeout=5)  # the reply is being held back now
    waiting = asyncio.create_task(transport.send(mail(2)))  # no slot: waits for one
    await eventually(lambda: slow.stats().connections == 1, "the first connection")
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await slow.wait_for(messages=2, timeout=5)  # the waiting send got the freed slot
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert transport.open_connections == 0
    assert slow.stats().connections == 2


async def test_run_closes_idle_connections_until_close(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(**via(sink, idle_seconds=0.2))
    runner = asyncio.create_task(transport.run())
    try:
        assert (await transport.send(mail())).outcome is Outcome.SENT
        await eventually(lambda: transport.open_connections == 0, "the janitor")
        await eventually(lambda: sink.stats().active_connections == 0, "the QUIT")
        assert sink.stats().replies.get(221) == 1
    finally:
        await transport.close()
        async with asyncio.timeout(5):
            await runner


async def test_close_quits_and_is_idempotent(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(**via(sink))
    assert (await transport.send(mail())).outcome is Outcome.SENT
    await transport.close()
    await transport.close()
    assert transport.open_connections == 0
    await eventually(lambda: sink.stats().active_connections == 0, "the connection to close")
    assert sink.stats().replies.get(221) == 1
    after = await transport.send(mail())
    assert (after.outcome, after.attempted) == (Outcome.TRANSIENT, False)


# -- TLS and AUTH ----------------------------------------------------------------------------


async def test_starttls_auto_uses_tls_when_offered(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(self_signed=True)
    transport = await make_transport(**via(sink, starttls="auto", tls_verify=False))
    result = await transport.send(mail())
    assert result.outcome is Outcome.SENT, result.detail
    assert sink.messages()[0].tls
    assert sink.stats().tls_sessions == 1

    clear = await make_transport(**via(sink, starttls="never"))
    assert (await clear.send(mail())).outcome is Outcome.SENT
    assert not sink.messages()[1].tls


async def test_certificates_are_verified_by_default(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(self_signed=True)
    transport = await make_transport(**via(sink, starttls="auto"))
    result = await transport.send(mail())
    assert result.outcome is Outcome.TRANSIENT and result.attempted
    assert result.detail is not None and "TLS failed" in result.detail
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert sink.messages() == []
    await eventually(lambda: sink.stats().tls_failures == 1, "the sink to see the hang-up")


async def test_starttls_always_refuses_a_server_without_it(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink()
    transport = await make_transport(**via(sink, starttls="always"))
    result = await transport.send(mail())
    assert result.outcome is Outcome.TRANSIENT and result.attempted
    assert result.detail == (
        f"127.0.0.1:{sink.port} does not offer STARTTLS and email.starttls is 'always': "
        "not sending in clear"
    )
    assert sink.messages() == []
    assert transport.open_connections == 0


async def test_auth_over_tls(make_smtp_sink: MakeSink, make_transport: MakeTransport) -> None:
    sink = await make_smtp_sink(self_signed=True, auth={"app": "s3cret"})
    transport = await make_transport(
        **via(sink, starttls="always", tls_verify=False, username="app", password="s3cret")
    )
    for n in range(2):
        assert (await transport.send(mail(n))).outcome is Outcome.SENT
    assert [m.auth_user for m in sink.messages()] == ["app", "app"]
    assert sink.stats().auth_successes == 1  # once per connection

    wrong = await make_transport(
        **via(sink, starttls="auto", tls_verify=False, username="app", password="nope")
    )
    result = await wrong.send(mail())
    assert result.outcome is Outcome.PERMANENT
    assert result.detail == "535 5.7.8 Authentication credentials invalid"


async def test_credentials_are_never_sent_in_clear(
    make_smtp_sink: MakeSink, make_transport: MakeTransport
) -> None:
    sink = await make_smtp_sink(self_signed=True, auth={"app": "s3cret"})
    transport = await make_transport(
        **via(sink, starttls="never", username="app", password="s3cret")
    )
    result = await transport.send(mail())
    assert result.outcome is Outcome.PERMANENT
    assert result.detail is not None
    assert "email.starttls is 'never'" in result.detail
    assert "refusing to send credentials unencrypted" in result.detail
    stats = sink.stats()
    assert stats.auth_failures == 0 and 538 not in stats.replies  # no AUTH command went out


# -- MX routing ------------------------------------------------------------------------------

ZONE = """
example.test.       300 IN MX 10 mx.example.test.
mx.example.test.    300 IN A  127.0.0.1
implicit.test.      300 IN A  127.0.0.1
nomail.test.        300 IN TXT "no mail here"
nullmx.test.        300 IN MX 0 .
backup.test.        300 IN MX 10 dead.backup.test.
backup.test.        300 IN MX 20 mx.example.test.
dead.backup.test.   300 IN A  127.0.0.2
"""


class ZoneServer(asyncio.DatagramProtocol):
    """A tiny authoritative DNS server over UDP on loopback, answering from `ZONE`.

    ``servfail.test`` gets SERVFAIL, ``silent.test`` no answer at all, names not in the zone
    NXDOMAIN. Every question is logged in ``queries`` as (name, type).
    """

    def __init__(self) -> None:
        self.records = RR.fromZone(ZONE)
        self.names = {str(rr.rname).lower() for rr in self.records}
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = DNSRecord.parse(data)
        name, qtype = str(request.q.qname).lower(), request.q.qtype
        self.queries.append((name.rstrip("."), QTYPE[qtype]))
        if name == "silent.test.":
            return
        reply = request.reply()
        if name == "servfail.test.":
            reply.header.rcode = RCODE.SERVFAIL
        elif name not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
        for rr in self.records:
            if str(rr.rname).lower() == name and rr.rtype == qtype:
                reply.add_answer(rr)
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)

    def count(self, name: str, qtype: str) -> int:
        return self.queries.count((name, qtype))


@pytest.fixture
async def zone() -> AsyncIterator[tuple[ZoneServer, str]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(ZoneServer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    yield server, f"127.0.0.1:{port}"
    transport.close()


async def test_delivery_through_mx_records(
    make_smtp_sink: MakeSink, make_transport: MakeTransport, zone: tuple[ZoneServer, str]
) -> None:
    server, nameserver = zone
    sink = await make_smtp_sink()
    transport = await make_transport(nameservers=[nameserver], mx_port=sink.port, starttls="never")
    for n in range(2):
        result = await transport.send(mail(n, to="bob@Example.test"))
        assert result.outcome is Outcome.SENT, result.detail
    assert [m.rcpt_tos for m in sink.messages()] == [("bob@Example.test",)] * 2
    assert server.count("example.test", "MX") == 1  # cached for its TTL
    assert server.count("mx.example.test", "A") == 1  # once: the connection was reused
    assert sink.stats().connections == 1

    implicit = await transport.send(mail(3, to="carol@implicit.test"))
    assert implicit.outcome is Outcome.SENT, implicit.detail
    backup = await transport.send(mail(4, to="dave@backup.test"))
    assert backup.outcome is Outcome.SENT, backup.detail
    assert ("dead.backup.test", "A") in server.queries  # the preferred MX was tried first


async def test_domains_without_a_mail_server(
    make_transport: MakeTransport, zone: tuple[ZoneServer, str]
) -> None:
    _, nameserver = zone
    transport = await make_transport(
        nameservers=[nameserver], mx_port=free_port(), connect_timeout_seconds=0.5
    )
    missing = await transport.send(mail(to="x@example.invalid"))
    assert missing.outcome is Outcome.PERMANENT
    assert missing.detail == "no mail server for example.invalid: the domain does not exist"
    nomail = await transport.send(mail(to="x@nomail.test"))
    assert nomail.outcome is Outcome.PERMANENT
    assert nomail.detail == "no mail server for nomail.test: no MX, A or AAAA record"
    null = await transport.send(mail(to="x@nullmx.test"))
    assert null.outcome is Outcome.PERMANENT
    assert null.detail is not None and "null MX" in null.detail

    servfail = await transport.send(mail(to="x@servfail.test"))
    assert (servfail.outcome, servfail.attempted) == (Outcome.TRANSIENT, False)
    assert servfail.detail is not None and "SERVFAIL" in servfail.detail
    silent = await transport.send(mail(to="x@silent.test"))
    assert (silent.outcome, silent.attempted) == (Outcome.TRANSIENT, False)
    assert silent.detail is not None and "timed out" in silent.detail

    down = await transport.send(mail(to="x@example.test"))  # MX found, nothing listening
    assert (down.outcome, down.attempted) == (Outcome.TRANSIENT, False)
    assert down.detail is not None and "connection refused" in down.detail
