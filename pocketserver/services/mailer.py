"""Outgoing mail through the SMTP server of ``[email]`` (validation links, password
resets).

smtplib runs in a worker thread, one mail at a time (a mail is rare; one thread keeps
the memory of a burst flat), bounded by ``email.timeout_seconds``. ``tls`` picks how
the connection is protected: ``starttls`` upgrades a plain connection and refuses to
send if the server does not offer it, ``tls`` speaks TLS from the first byte, ``none``
sends in the clear (a relay on the same machine). Certificates are checked with the
one outbound TLS context (``[federation] verify_tls`` and ``extra_ca_file``).

The templates are plain text, one short paragraph each, with the link on a line of its
own and the code a person can type instead. Lines may be long (a link is never folded:
SMTP allows 998 characters), so the mail is sent as 7-bit text where it can be.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from pocketserver.config import EmailConfig
from pocketserver.services.outbound import Outbound, OutboundError

if TYPE_CHECKING:
    import smtplib
    from email.message import EmailMessage

log = logging.getLogger("pocketserver.mailer")


class MailError(Exception):
    """The mail could not be handed to the SMTP server."""


VALIDATION_TEMPLATES: dict[str, tuple[str, str]] = {
    # purpose -> (subject, what the person asked for)
    "register": ("Confirm your e-mail address for {server}", "create an account with this e-mail address"),
    "add": ("Confirm your e-mail address for {server}", "add this e-mail address to their account"),
    "password": ("Reset your password on {server}", "reset the password of the account with this e-mail address"),
}

VALIDATION_BODY = """\
Hello,

someone, hopefully you, asked to {action} on the Matrix server {server}.

To confirm, open this link:

{link}

or, if your app asks for a code, enter this one:

{token}

The link and the code work once, for {minutes} minutes. If it was not you, ignore
this mail: nothing changes.

--
{server}
"""


def validation_mail(purpose: str, server: str, link: str, token: str, minutes: int) -> tuple[str, str]:
    """(subject, body) of the mail that validates an address for ``purpose``."""
    subject, action = VALIDATION_TEMPLATES[purpose]
    body = VALIDATION_BODY.format(action=action, server=server, link=link, token=token, minutes=minutes)
    return subject.format(server=server), body


class Mailer:
    def __init__(self, config: EmailConfig, server_name: str, outbound: Outbound | None = None) -> None:
        self.config = config
        self.outbound = outbound or Outbound()
        self.server_name = server_name
        self._limiter = trio.CapacityLimiter(1)
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def sender(self) -> str:
        if self.config.notif_from:
            return self.config.notif_from
        host = self.server_name.rsplit(":", 1)[0] if not self.server_name.endswith("]") else self.server_name
        from email.utils import formataddr

        return formataddr(("pocketserver", f"noreply@{host}"))

    def compose(self, to: str, subject: str, text: str) -> EmailMessage:
        # The email package is imported on the first mail: a server without [email]
        # never needs it (it costs about a megabyte).
        from email.message import EmailMessage
        from email.policy import SMTP as SMTP_POLICY
        from email.utils import make_msgid

        msg = EmailMessage(policy=SMTP_POLICY.clone(max_line_length=998))
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = make_msgid(domain="pocketserver.invalid")
        msg.set_content(text)
        return msg

    async def send(self, to: str, subject: str, text: str) -> None:
        """Hand one mail to the SMTP server; :class:`MailError` if it fails."""
        if not self.enabled:
            raise MailError("no SMTP server is configured")
        import smtplib

        msg = self.compose(to, subject, text)
        try:
            await trio.to_thread.run_sync(self._send_blocking, msg, limiter=self._limiter)
        except (OSError, smtplib.SMTPException, UnicodeError, OutboundError) as e:
            self.failed += 1
            log.warning("mail to %s failed: %s", to, e)
            raise MailError(str(e)) from None
        self.sent += 1

    def _send_blocking(self, msg: EmailMessage) -> None:
        import smtplib

        cfg = self.config
        timeout = cfg.timeout_seconds
        client: smtplib.SMTP
        if cfg.tls == "tls":
            client = smtplib.SMTP_SSL(
                cfg.smtp_host, cfg.smtp_port, timeout=timeout, context=self.outbound.tls_context()
            )
        else:
            client = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=timeout)
        try:
            client.ehlo_or_helo_if_needed()
            if cfg.tls == "starttls":
                if not client.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the SMTP server does not offer STARTTLS")
                client.starttls(context=self.outbound.tls_context())
                client.ehlo()
            if cfg.smtp_user:
                client.login(cfg.smtp_user, cfg.smtp_pass)
            client.send_message(msg)
        finally:
            # Once the mail was taken, a server that fumbles QUIT changes nothing.
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()

    def statistics(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed}
