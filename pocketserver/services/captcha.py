"""reCAPTCHA checks for registration (client-server-api "Google ReCaptcha").

A client (or the fallback page, api/client/sso.py) sends the answer its user got from
the reCAPTCHA widget; :meth:`RecaptchaVerifier.verify` asks the siteverify API the
operator configured (``[registration] recaptcha_siteverify_api``) with the private key,
as a form POST, and believes its ``success``.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

from pocketserver.config import RegistrationConfig
from pocketserver.errors import MatrixError
from pocketserver.services.outbound import OUTBOUND_ERRORS, Outbound

log = logging.getLogger("pocketserver.captcha")

MAX_ANSWER_BYTES = 64 * 1024
MAX_CAPTCHA_RESPONSE_CHARS = 8192
TIMEOUT_S = 15.0


class RecaptchaVerifier:
    def __init__(self, config: RegistrationConfig, outbound: Outbound) -> None:
        self.public_key = config.recaptcha_public_key
        self.private_key = config.recaptcha_private_key
        self.api = config.recaptcha_siteverify_api
        self.outbound = outbound

    async def verify(self, answer: str) -> bool:
        """Whether the siteverify API accepts ``answer``; 502 if it cannot be asked."""
        if not answer or len(answer) > MAX_CAPTCHA_RESPONSE_CHARS:
            return False
        form = urlencode({"secret": self.private_key, "response": answer}).encode("ascii")
        try:
            reply = await self.outbound.request(
                "POST", self.api, body=form,
                headers=[("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")],
                policy=None, max_bytes=MAX_ANSWER_BYTES, timeout_s=TIMEOUT_S,
            )
        except OUTBOUND_ERRORS as e:
            log.warning("reCAPTCHA siteverify %s: %s", self.api, e)
            raise MatrixError(502, "M_UNKNOWN", "The CAPTCHA service could not be reached") from None
        if reply.status != 200:
            log.warning("reCAPTCHA siteverify %s answered HTTP %d", self.api, reply.status)
            raise MatrixError(502, "M_UNKNOWN", "The CAPTCHA service failed")
        try:
            data = json.loads(reply.body)
        except (ValueError, RecursionError):
            raise MatrixError(502, "M_UNKNOWN", "The CAPTCHA service answered nonsense") from None
        return isinstance(data, dict) and data.get("success") is True
