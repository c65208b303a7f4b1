"""E-mail over SMTP (stdlib ``smtplib`` in a worker thread: a notification is a few mails a
minute, not worth an async SMTP dependency).

Each mail is plain text with an HTML alternative, UTF-8 throughout (a Chinese subject is
RFC 2047-encoded by the ``email`` package). ``Message-ID: <KEY@meterwatch>`` and
``X-Meterwatch-Key`` carry the idempotency key, so a mail system or a reader's filter can drop the
duplicate of a retried delivery; ``Auto-Submitted: auto-generated`` keeps out-of-office replies
away. SMTP 4xx replies and lost connections are retryable, 5xx replies are not. A mail that some
recipients refused but others accepted counts as sent (sending again would duplicate it for the
others); the receipt names the refused ones.
"""

from __future__ import annotations

import asyncio
import html
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

from pydantic import Field, SecretStr, model_validator

from notify.channels._render import links
from notify.channels.base import Channel, DeliveryError, Spec
from notify.model import Notification

MSGID_UNSAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")


class EmailSpec(Spec):
    host: str
    port: int = Field(25, gt=0, lt=65536)
    starttls: bool = False
    ssl: bool = False  # implicit TLS (port 465)
    username: str | None = None
    password: SecretStr | None = None
    sender: str
    to: list[str] = Field(min_length=1)
    timeout_s: float = Field(10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _consistent(self) -> EmailSpec:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS) and starttls")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


def message_id(key: str) -> str:
    return f"<{MSGID_UNSAFE.sub('_', key)}@meterwatch>"


def build_message(n: Notification, sender: str, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = n.title
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(n.key)
    msg["X-Meterwatch-Key"] = n.key
    msg["X-Meterwatch-Event"] = str(n.trigger)
    msg["Auto-Submitted"] = "auto-generated"
    link_lines = [f"{label}: {url}" for label, url in links(n)]
    msg.set_content("\n".join([n.text, "", *link_lines]), cte="base64")
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in n.text.split("\n") if p.strip())
    anchors = " · ".join(
        f'<a href="{html.escape(url, quote=True)}">{html.escape(label)}</a>'
        for label, url in links(n)
    )
    lang = "zh-CN" if n.lang.startswith("zh") else "en"
    msg.add_alternative(
        f'<!DOCTYPE html><html lang="{lang}"><body><h3>{html.escape(n.title)}</h3>'
        f"{paragraphs}{f'<p>{anchors}</p>' if anchors else ''}</body></html>",
        subtype="html",
        cte="base64",
    )
    return msg


def classify(e: Exception, where: str) -> DeliveryError:
    """SMTP's own rule: 4xx is transient, 5xx permanent; lost connections are transient."""
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in e.recipients.values()]
        return DeliveryError(
            f"{where}: all recipients refused ({', '.join(map(str, codes))})",
            retryable=all(400 <= c < 500 for c in codes),
            status=codes[0] if codes else None,
        )
    if isinstance(e, smtplib.SMTPResponseException):
        reply = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else ""
        return DeliveryError(
            f"{where}: {e.smtp_code} {reply[:200]}".rstrip(),
            retryable=400 <= e.smtp_code < 500,
            status=e.smtp_code,
        )
    if isinstance(e, smtplib.SMTPServerDisconnected | TimeoutError):
        return DeliveryError(f"{where}: {type(e).__name__}: {e}", retryable=True)
    if isinstance(e, ssl.SSLCertVerificationError | smtplib.SMTPException):
        # A certificate that does not verify, no STARTTLS or AUTH offered: configuration.
        return DeliveryError(f"{where}: {type(e).__name__}: {e}", retryable=False)
    if isinstance(e, OSError):
        return DeliveryError(f"{where}: {type(e).__name__}: {e}", retryable=True)
    raise e


class EmailChannel(Channel):
    kind = "email"
    spec_model = EmailSpec
    _spec: EmailSpec

    def target(self) -> str:
        scheme = "smtps" if self._spec.ssl else "smtp"
        return f"{scheme}://{self._spec.host}:{self._spec.port}"

    async def send(self, n: Notification) -> str:
        msg = build_message(n, self._spec.sender, self._spec.to)
        try:
            return await asyncio.to_thread(self._deliver, msg.as_bytes(policy=SMTP_POLICY))
        except Exception as e:
            raise classify(e, self.target()) from e

    def _deliver(self, data: bytes) -> str:
        """One SMTP session; MAIL/RCPT/DATA spelled out (not ``sendmail``) to keep the server's
        final reply, which names its queue id, as the receipt."""
        spec = self._spec
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if spec.ssl:
            smtp = smtplib.SMTP_SSL(spec.host, spec.port, timeout=spec.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(spec.host, spec.port, timeout=spec.timeout_s)
        with smtp:
            if spec.starttls:
                smtp.starttls(context=context)
            if spec.username is not None and spec.password is not None:
                smtp.login(spec.username, spec.password.get_secret_value())
            smtp.ehlo_or_helo_if_needed()
            code, reply = smtp.mail(spec.sender)
            if code != 250:
                smtp.rset()
                raise smtplib.SMTPSenderRefused(code, reply, spec.sender)
            refused: dict[str, tuple[int, bytes]] = {}
            for rcpt in spec.to:
                code, reply = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, reply)
            if len(refused) == len(spec.to):
                smtp.rset()
                raise smtplib.SMTPRecipientsRefused(refused)
            code, reply = smtp.data(data)
            if code != 250:
                smtp.rset()
                raise smtplib.SMTPDataError(code, reply)
        receipt = f"{code} {reply.decode(errors='replace')}"
        if refused:
            receipt += "; refused " + ", ".join(f"{r} {c}" for r, (c, _) in refused.items())
        return receipt[:500]
