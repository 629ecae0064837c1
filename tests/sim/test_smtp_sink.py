"""The SMTP sink against Python's smtplib: replies, rejects, failure draws, limits, TLS, AUTH."""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sluice.sim.smtp_sink import (
    SmtpSink,
    SmtpSinkOptions,
    add_arguments,
    options_from_args,
)

pytestmark = pytest.mark.integration

MakeSink = Callable[..., Awaitable[SmtpSink]]
MESSAGE = (
    b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: hi\r\n\r\nline one\r\n.starts with a dot\r\n"
)


def connect(sink: SmtpSink) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5)


def trusting(sink: SmtpSink) -> ssl.SSLContext:
    """A client context that verifies the sink's self-signed certificate."""
    assert sink.certificate_pem is not None
    return ssl.create_default_context(cadata=sink.certificate_pem)


async def in_thread(call: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(call)


async def test_accepts_a_message_and_keeps_it_byte_for_byte(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink()

    def send() -> tuple[int, bytes]:
        with connect(sink) as client:
            client.ehlo()
            client.mail("a@src.test")
            client.rcpt("b@dst.test")
            client.rcpt("c@dst.test")
            return client.data(MESSAGE)

    code, reply = await in_thread(send)
    await sink.wait_for(messages=1, timeout=5)
    assert code == 250
    [mail] = sink.messages()
    assert reply.decode() == f"2.0.0 Ok: queued as {mail.queue_id}"
    assert len(mail.queue_id) == 10 and int(mail.queue_id, 16) >= 0
    assert mail.mail_from == "a@src.test"
    assert mail.rcpt_tos == ("b@dst.test", "c@dst.test")
    assert mail.data == MESSAGE  # dot-stuffing undone, CRLF kept
    assert not mail.tls and mail.auth_user is None
    assert mail.peer.startswith("127.0.0.1:")
    stats = sink.stats()
    assert (stats.connections, stats.messages, stats.recipients) == (1, 1, 2)
    assert stats.bytes == len(MESSAGE)
    assert stats.replies[220] == 1 and stats.replies[354] == 1 and stats.replies[221] == 1
    # EHLO's multi-line reply counts once: EHLO, MAIL, 2 RCPT, DATA's end
    assert stats.replies[250] == 5


async def test_rejects_recipients_by_address_and_domain(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(
        reject_recipients={
            "Nobody@X.test": (550, "5.1.1 No such user"),
            "@greylist.test": (451, "4.7.1 Try again later"),
        }
    )

    def send() -> list[tuple[int, bytes]]:
        with connect(sink) as client:
            client.ehlo()
            client.mail("a@src.test")
            replies = [
                client.rcpt("nobody@x.test"),
                client.rcpt("anyone@GREYLIST.test"),
                client.rcpt("somebody@x.test"),
            ]
            replies.append(client.data(MESSAGE))
            return replies

    nobody, grey, somebody, data = await in_thread(send)
    assert nobody == (550, b"5.1.1 No such user")
    assert grey == (451, b"4.7.1 Try again later")
    assert somebody[0] == 250 and data[0] == 250
    assert sink.messages()[0].rcpt_tos == ("somebody@x.test",)
    stats = sink.stats()
    assert stats.rejected_recipients == 2
    assert stats.recipients == 1


async def test_failure_ratios_follow_the_seed(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(temp_fail_ratio=0.3, perm_fail_ratio=0.2, seed=42)
    draws = random.Random(42)
    expected = []
    for _ in range(20):
        draw = draws.random()
        expected.append(451 if draw < 0.3 else 554 if draw < 0.5 else 250)

    def send() -> list[int]:
        codes = []
        with connect(sink) as client:
            client.ehlo()
            for _ in range(20):
                client.mail("a@src.test")
                client.rcpt("b@dst.test")
                codes.append(client.data(MESSAGE)[0])
        return codes

    codes = await in_thread(send)
    assert codes == expected
    assert {451, 554, 250} <= set(codes)
    stats = sink.stats()
    assert stats.messages == codes.count(250)
    assert stats.rejected_messages == codes.count(451) + codes.count(554)
    assert len(sink.messages()) == codes.count(250)


async def test_size_limit_is_announced_and_enforced(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(max_message_size=100)
    big = b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"

    def send() -> tuple[str, tuple[int, bytes], tuple[int, bytes]]:
        with connect(sink) as client:
            client.ehlo()
            size = client.esmtp_features["size"]
            declared = client.mail("a@src.test", ["SIZE=300"])
            client.mail("a@src.test")  # no SIZE: the limit bites at the end of DATA
            client.rcpt("b@dst.test")
            return size, declared, client.data(big)

    size, declared, data = await in_thread(send)
    assert size == "100"
    assert declared[0] == 552
    assert data[0] == 552
    assert sink.messages() == []
    assert sink.stats().rejected_messages == 1


async def test_starttls_with_a_verified_self_signed_certificate(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(self_signed=True)
    context = trusting(sink)

    def send() -> tuple[bool, bool]:
        with connect(sink) as client:
            client.ehlo()
            offered = client.has_extn("starttls")
            client.starttls(context=context)  # verifies against 127.0.0.1 in the certificate
            client.ehlo()
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
            return offered, client.has_extn("starttls")

    offered_before, offered_after = await in_thread(send)
    assert offered_before and not offered_after
    await sink.wait_for(messages=1, timeout=5)
    assert sink.messages()[0].tls
    assert sink.stats().tls_sessions == 1


async def test_require_starttls_refuses_mail_in_clear(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(self_signed=True, require_starttls=True)

    def send() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with connect(sink) as client:
            client.ehlo()
            clear = client.mail("a@src.test")
            client.starttls(context=trusting(sink))
            client.ehlo()
            return clear, client.mail("a@src.test")

    clear, encrypted = await in_thread(send)
    assert clear[0] == 530
    assert encrypted[0] == 250


async def test_auth_is_offered_only_over_tls_and_required(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(self_signed=True, auth={"app": "s3cret"})
    plain = base64.b64encode(b"\0app\0s3cret").decode()

    def send() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with connect(sink) as client:
            client.ehlo()
            seen["auth_in_clear"] = client.has_extn("auth")
            seen["auth_attempt_in_clear"] = client.docmd("AUTH", f"PLAIN {plain}")
            seen["mail_unauthenticated"] = client.mail("a@src.test")
            client.starttls(context=trusting(sink))
            client.ehlo()
            seen["mechanisms"] = client.esmtp_features["auth"]
            try:
                client.login("app", "wrong")
            except smtplib.SMTPAuthenticationError as exc:
                seen["wrong"] = exc.smtp_code
            seen["login"] = client.login("app", "s3cret")
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
        return seen

    seen = await in_thread(send)
    assert seen["auth_in_clear"] is False
    assert seen["auth_attempt_in_clear"][0] == 538
    assert seen["mail_unauthenticated"][0] == 530
    assert set(seen["mechanisms"].split()) == {"LOGIN", "PLAIN"}
    assert seen["wrong"] == 535
    assert seen["login"][0] == 235
    await sink.wait_for(messages=1, timeout=5)
    assert sink.messages()[0].auth_user == "app"
    stats = sink.stats()
    # smtplib tries each offered mechanism with the wrong password before giving up
    assert stats.auth_successes == 1 and stats.auth_failures >= 1


async def test_a_421_reply_closes_the_connection(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(reject_recipients={"@busy.test": (421, "4.7.0 Too busy")})

    def send() -> tuple[tuple[int, bytes], type[Exception] | None]:
        client = connect(sink)
        try:
            client.ehlo()
            client.mail("a@src.test")
            reply = client.rcpt("b@busy.test")
            try:
                client.noop()
            except smtplib.SMTPServerDisconnected as exc:
                return reply, type(exc)
            return reply, None
        finally:
            client.close()

    reply, error = await in_thread(send)
    assert reply == (421, b"4.7.0 Too busy")
    assert error is smtplib.SMTPServerDisconnected


async def test_ehlo_can_leave_out_8bitmime_and_smtputf8(make_smtp_sink: MakeSink) -> None:
    full = await make_smtp_sink()
    seven_bit = await make_smtp_sink(eight_bit_mime=False, smtputf8=False)

    def features(sink: SmtpSink) -> set[str]:
        with connect(sink) as client:
            client.ehlo()
            return set(client.esmtp_features)

    assert {"8bitmime", "smtputf8", "size"} <= await in_thread(lambda: features(full))
    assert "auth" not in await in_thread(lambda: features(full))
    left = await in_thread(lambda: features(seven_bit))
    assert "8bitmime" not in left and "smtputf8" not in left and "size" in left


async def test_record_limit_keeps_the_newest_and_reset_forgets(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(record_limit=2)

    def send() -> None:
        with connect(sink) as client:
            for n in range(3):
                client.sendmail("a@src.test", [f"r{n}@dst.test"], MESSAGE)

    await in_thread(send)
    await sink.wait_for(messages=3, timeout=5)
    assert [m.rcpt_tos for m in sink.messages()] == [("r1@dst.test",), ("r2@dst.test",)]
    assert sink.stats().messages == 3
    last_id = sink.messages()[-1].queue_id
    sink.reset()
    assert sink.messages() == [] and sink.stats().messages == 0
    await in_thread(send)
    await sink.wait_for(messages=3, timeout=5)
    assert all(int(m.queue_id, 16) > int(last_id, 16) for m in sink.messages())


async def test_wait_for_names_what_is_missing(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink()
    with pytest.raises(TimeoutError, match=r"waited 0.05 s for 1 messages, got 0"):
        await sink.wait_for(messages=1, timeout=0.05)


async def test_close_ends_open_sessions(make_smtp_sink: MakeSink) -> None:
    sink = await make_smtp_sink(self_signed=True)
    client = await in_thread(lambda: connect(sink))
    try:
        await in_thread(lambda: (client.ehlo(), client.starttls(context=trusting(sink))))
        assert sink.stats().active_connections == 1
        async with asyncio.timeout(5):
            await sink.close()
        assert sink.stats().active_connections == 0
        with pytest.raises(smtplib.SMTPServerDisconnected):
            await in_thread(client.noop)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"auth": {"u": "p"}}, "auth: AUTH is offered only over TLS"),
        ({"require_starttls": True}, "require_starttls: needs a certificate"),
        ({"tls_cert": "c.pem"}, "tls_cert: tls_cert and tls_key go together"),
        ({"temp_fail_ratio": 1.5}, "temp_fail_ratio: expected a number between 0 and 1"),
        ({"temp_fail_ratio": 0.6, "perm_fail_ratio": 0.6}, "perm_fail_ratio: temp_fail_ratio"),
        ({"reject_recipients": {"x.test": (550, "no")}}, "reject_recipients: expected an add"),
        ({"reject_recipients": {"@x.test": (250, "ok")}}, r"reject_recipients\['@x.test'\]"),
        ({"record_limit": -1}, "record_limit: expected >= 0"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmtpSinkOptions(**options)


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "0", "--self-signed", "--auth", "demo:secret",
         "--reject", "@grey.test=451:4.7.1 Try again later", "--temp-fail-ratio", "0.1"]
    )  # fmt: skip
    options = options_from_args(args)
    assert options.auth == {"demo": "secret"}
    assert options.reject_recipients == {"@grey.test": (451, "4.7.1 Try again later")}
    assert options.self_signed and options.temp_fail_ratio == 0.1
    bad = parser.parse_args(["--temp-fail-ratio", "2"])
    with pytest.raises(ValueError, match="--temp-fail-ratio: expected a number between"):
        options_from_args(bad)
