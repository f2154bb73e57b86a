"""The example email service: config validation and its two backends."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import email_service
from examples.email_service import (
    EmailConfig,
    OutboxBackend,
    RecipientRefused,
    SMTPBackend,
    backend_from_env,
    build_message,
)


def config(**overrides: object) -> EmailConfig:
    data: dict[str, object] = {"to": ["ada@example.org"], "subject": "Hi", "text": "Hello"}
    data.update(overrides)
    return EmailConfig.model_validate(data)


def test_config_validation() -> None:
    assert config(**{"from": "farm@example.org"}).sender == "farm@example.org"
    for bad in (
        {"to": []},
        {"to": ["not-an-address"]},
        {"subject": ""},
        {"cc": ["x@example.org"]},
        {"from": "nobody"},
    ):
        with pytest.raises(ValidationError):
            config(**bad)


def test_message_has_the_config() -> None:
    message = build_message(config(to=["a@example.org", "b@example.org"]))
    assert message["To"] == "a@example.org, b@example.org"
    assert message["Subject"] == "Hi"
    assert message["From"] == email_service.DEFAULT_SENDER
    assert message.get_content().strip() == "Hello"


async def test_outbox_writes_eml_and_refuses_invalid_domains(tmp_path: Path) -> None:
    backend = OutboxBackend(tmp_path / "outbox")
    message_id = await backend.send(build_message(config()))
    (written,) = (tmp_path / "outbox").glob("*.eml")
    parsed = message_from_bytes(written.read_bytes())
    assert parsed["Message-ID"] == message_id
    with pytest.raises(RecipientRefused, match=r"no such domain: x@farm\.invalid"):
        await backend.send(build_message(config(to=["x@farm.invalid"])))
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_backend_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EMAIL_SMTP_HOST", raising=False)
    monkeypatch.setenv("EMAIL_OUTBOX", str(tmp_path))
    outbox = backend_from_env()
    assert isinstance(outbox, OutboxBackend)
    assert outbox.outbox == tmp_path
    monkeypatch.setenv("EMAIL_SMTP_HOST", "smtp.example.org")
    monkeypatch.setenv("EMAIL_SMTP_PORT", "2525")
    monkeypatch.setenv("EMAIL_SMTP_PASSWORD", "pw-s3cret")
    smtp = backend_from_env()
    assert isinstance(smtp, SMTPBackend)
    assert (smtp.host, smtp.port) == ("smtp.example.org", 2525)
    assert "pw-s3cret" not in repr(smtp)


@dataclass
class FakeSMTP:
    """Just enough SMTP to accept one message per connection."""

    refuse: set[str] = field(default_factory=set)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            buffer = b""

            async def line() -> bytes:
                nonlocal buffer
                while b"\r\n" not in buffer:
                    buffer += await stream.receive()
                text, buffer = buffer.split(b"\r\n", 1)
                return text

            await stream.send(b"220 fake ESMTP\r\n")
            while True:
                command = await line()
                verb = command[:4].upper()
                if verb == b"EHLO":
                    await stream.send(b"250 fake\r\n")
                elif verb == b"RCPT":
                    address = command.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    ok = address not in self.refuse
                    await stream.send(b"250 ok\r\n" if ok else b"550 no such user\r\n")
                elif verb == b"DATA":
                    await stream.send(b"354 go ahead\r\n")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        data += buffer
                        buffer = b""
                        if not data.endswith(b"\r\n.\r\n"):
                            buffer = await stream.receive()
                    self.messages.append(data)
                    await stream.send(b"250 queued\r\n")
                elif verb == b"QUIT":
                    await stream.send(b"221 bye\r\n")
                    return
                else:
                    await stream.send(b"250 ok\r\n")


@pytest.fixture
async def smtp() -> AsyncIterator[FakeSMTP]:
    fake = FakeSMTP()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    fake.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, fake.handle)
        yield fake
        group.cancel_scope.cancel()


async def test_smtp_backend_sends_through_the_server(smtp: FakeSMTP) -> None:
    backend = SMTPBackend("127.0.0.1", smtp.port, starttls=False, timeout=5)
    with anyio.fail_after(10):
        message_id = await backend.send(build_message(config()))
    (data,) = smtp.messages
    assert message_id.encode() in data
    assert b"Subject: Hi" in data


async def test_smtp_backend_reports_refused_recipients(smtp: FakeSMTP) -> None:
    smtp.refuse.add("ada@example.org")
    backend = SMTPBackend("127.0.0.1", smtp.port, starttls=False, timeout=5)
    with anyio.fail_after(10), pytest.raises(RecipientRefused) as caught:
        await backend.send(build_message(config()))
    assert caught.value.recipients == ["ada@example.org"]
