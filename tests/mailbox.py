"""A real SMTP server on loopback (aiosmtpd, in its own thread) whose received mails the
tests read as a person would: the newest mail to an address, its text, its links."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import trio

from tests.interop.conftest import free_port


@dataclass
class Mailbox:
    port: int
    mails: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.mails.append(msg)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.mails if m["To"] == address]

    async def wait_for(self, address: str, count: int = 1, timeout_s: float = 20.0) -> EmailMessage:
        """The ``count``-th mail to ``address``, waiting for it to arrive."""
        with trio.fail_after(timeout_s):
            for _ in range(10_000):
                got = self.to(address)
                if len(got) >= count:
                    return got[count - 1]
                await trio.sleep(0.02)
        raise AssertionError(f"no mail number {count} to {address}")


def text_of(mail: EmailMessage) -> str:
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def links_in(mail: EmailMessage) -> list[str]:
    return re.findall(r"https?://\S+", text_of(mail))


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
