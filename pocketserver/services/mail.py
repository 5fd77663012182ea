"""Outgoing mail: one small interface, :class:`Mailer`, and its SMTP implementation.

Whatever sends a mail (the identity service's validation and invitation mails, and the
homeserver's own 3PID mails) takes a :class:`Mailer` and calls
``await mailer.send(to, subject, text)``; a failure is :class:`MailError`, which callers
answer as ``M_EMAIL_SEND_ERROR``. Tests hand in a real SMTP server on loopback.

:class:`SmtpMailer` speaks SMTP with the standard library in a worker thread (one mail at
a time, each bounded by ``[email] timeout_seconds``): plain, STARTTLS or implicit TLS,
with a login when a user name is configured. With no ``smtp_host`` it sends nothing and
every send fails with a clear message.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

import trio

from pocketserver.config import EmailConfig

log = logging.getLogger("pocketserver.mail")


class MailError(Exception):
    """The mail could not be handed to the mail server."""


class Mailer(Protocol):
    async def send(self, to: str, subject: str, text: str) -> None: ...


class SmtpMailer:
    def __init__(self, config: EmailConfig, server_name: str) -> None:
        self.config = config
        self.sender = config.notif_from or f"pocketserver <noreply@{server_name.split(':', 1)[0]}>"
        self._one_at_a_time = trio.CapacityLimiter(1)
        self.sent = 0

    @property
    def configured(self) -> bool:
        return bool(self.config.smtp_host)

    def _message(self, to: str, subject: str, text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.sender.rsplit("@", 1)[-1].rstrip(">") or None)
        msg.set_content(text)
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        cfg = self.config
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if cfg.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
        with smtp:
            if cfg.smtp_security == "starttls":
                smtp.starttls(context=context)
            if cfg.smtp_username:
                smtp.login(cfg.smtp_username, cfg.smtp_password)
            smtp.send_message(msg)

    async def send(self, to: str, subject: str, text: str) -> None:
        if not self.configured:
            raise MailError("no mail server is configured ([email] smtp_host)")
        msg = self._message(to, subject, text)
        async with self._one_at_a_time:
            try:
                with trio.fail_after(self.config.timeout_seconds + 5):
                    await trio.to_thread.run_sync(self._send_blocking, msg, abandon_on_cancel=True)
            except (OSError, smtplib.SMTPException, trio.TooSlowError) as e:
                log.warning("mail to %s failed: %s", to, e)
                raise MailError(str(e) or type(e).__name__) from None
        self.sent += 1
