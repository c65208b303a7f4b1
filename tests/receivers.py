"""Real local receivers for notification tests: an HTTP server that answers and checks signatures
like WeCom, DingTalk, Feishu or a signed webhook consumer; an SMTP server; an MQTT subscriber.

No mocks: channels send over real sockets, so a test sees what a real receiver would. Usage::

    with HttpReceiver("dingtalk", secret="SEC123") as hook:
        channel = build_channel("ops", {"kind": "dingtalk", "url": hook.url, "secret": "SEC123"})
        asyncio.run(channel.send(n))
        [req] = hook.wait_for(1)
        assert req.signature_valid and hook.keys() == [n.key]

``stop()`` then ``start()`` brings the HTTP receiver back on the same port (in between,
connections are refused, like a service that is down); ``answer(503)`` makes it fail on purpose.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

import orjson
import paho.mqtt.client as mqtt
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from meterwatch.embedded import free_port
from meterwatch.mqtt import BrokerAddress, make_client
from tests.helpers import wait_until

Flavour = Literal["webhook", "wecom", "dingtalk", "feishu"]

OK_ANSWERS: dict[str, Any] = {
    "webhook": {},
    "wecom": {"errcode": 0, "errmsg": "ok"},
    "dingtalk": {"errcode": 0, "errmsg": "ok"},
    "feishu": {"code": 0, "msg": "success", "data": {}},
}
WECOM_LIMITS = {"markdown": 4096, "text": 2048}  # bytes of content, as WeCom counts them


class _Running:
    """``with Receiver(...) as r:`` starts it and stops it, whatever the kind."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any
    signature_valid: bool | None  # None: nothing to check (no secret configured)
    status: int  # what the receiver answered
    answer: Any


class HttpReceiver(_Running):
    """An HTTP endpoint on 127.0.0.1 that records requests and answers like ``flavour``.

    With a ``secret`` it verifies signatures as the real service does (webhook: the
    X-Meterwatch-Signature HMAC, 5 minutes' replay window; DingTalk: ``timestamp``/``sign`` in the
    query; Feishu: in the body; both within an hour) and answers a bad one as the service does
    (401; errcode 310000; code 19021). The robots also check the token in their URL.
    """

    def __init__(self, flavour: Flavour = "webhook", *, secret: str | None = None) -> None:
        self.flavour = flavour
        self.secret = secret
        self.token = "tok-" + flavour
        self.port = 0
        self.requests: list[HttpRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._override: tuple[int, Any, float] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request a connection, so stop() leaves no kept-alive socket that
            # could still answer while the receiver is "down".
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- what tests use --------------------------------------------------------------------
    @property
    def url(self) -> str:
        base = f"http://127.0.0.1:{self.port}"
        return {
            "webhook": f"{base}/hook",
            "wecom": f"{base}/cgi-bin/webhook/send?key={self.token}",
            "dingtalk": f"{base}/robot/send?access_token={self.token}",
            "feishu": f"{base}/open-apis/bot/v2/hook/{self.token}",
        }[self.flavour]

    def answer(self, status: int = 200, body: Any = None, *, delay_s: float = 0.0) -> None:
        """Answer every request from now on with ``status`` and ``body`` (JSON) after
        ``delay_s``; ``answer()`` goes back to the flavour's own answers."""
        reset = status == 200 and body is None and delay_s == 0.0
        self._override = None if reset else (status, body, delay_s)

    def keys(self) -> list[str]:
        """Idempotency keys seen, in arrival order."""
        with self._lock:
            return [r.headers.get("idempotency-key", "") for r in self.requests]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[HttpRequest]:
        assert wait_until(lambda: len(self.requests) >= n, timeout, every=0.01), (
            f"{len(self.requests)} of {n} requests after {timeout}s"
        )
        with self._lock:
            return list(self.requests)

    # -- the service -----------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        try:
            parsed: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        valid = self._verify(headers, query, body, parsed)
        status, answer = self._respond(parts.path, query, parsed, valid)
        delay = 0.0
        if self._override is not None:
            status, override_body, delay = self._override
            answer = override_body if override_body is not None else {}
        with self._lock:
            self.requests.append(
                HttpRequest("POST", parts.path, query, headers, body, parsed, valid, status, answer)
            )
        if delay:
            time.sleep(delay)
        out = orjson.dumps(answer)
        with suppress(OSError):  # the client may have given up (timeout tests)
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            h.wfile.write(out)

    def _verify(
        self, headers: dict[str, str], query: dict[str, str], body: bytes, parsed: Any
    ) -> bool | None:
        if self.secret is None or self.flavour == "wecom":
            return None
        secret = self.secret.encode()
        now = time.time()
        try:
            if self.flavour == "webhook":
                ts = headers.get("x-meterwatch-timestamp", "")
                mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(headers.get("x-meterwatch-signature", ""), f"sha256={mac}")
                return ok and abs(now - int(ts)) <= 300
            if self.flavour == "dingtalk":
                ts = query.get("timestamp", "")
                digest = hmac.new(secret, f"{ts}\n{self.secret}".encode(), hashlib.sha256)
                expected = base64.b64encode(digest.digest()).decode()
                ok = hmac.compare_digest(query.get("sign", ""), expected)
                return ok and abs(now * 1000 - int(ts)) <= 3600_000
            ts = str((parsed or {}).get("timestamp", ""))
            digest = hmac.new(f"{ts}\n{self.secret}".encode(), b"", hashlib.sha256)
            expected = base64.b64encode(digest.digest()).decode()
            ok = hmac.compare_digest(str((parsed or {}).get("sign", "")), expected)
            return ok and abs(now - int(ts)) <= 3600
        except ValueError:  # a missing or malformed timestamp
            return False

    def _respond(
        self, path: str, query: dict[str, str], parsed: Any, valid: bool | None
    ) -> tuple[int, Any]:
        f = self.flavour
        if f == "webhook":
            return (401, {"error": "bad signature"}) if valid is False else (200, {})
        if f == "wecom":
            if query.get("key") != self.token:
                return 200, {"errcode": 93000, "errmsg": "invalid webhook url"}
            kind = (parsed or {}).get("msgtype")
            if kind not in WECOM_LIMITS:
                return 200, {"errcode": 40008, "errmsg": "invalid message type"}
            content = str(parsed.get(kind, {}).get("content", ""))
            if len(content.encode()) > WECOM_LIMITS[kind]:
                return 200, {
                    "errcode": 40058,
                    "errmsg": f"{kind}.content exceed max length {WECOM_LIMITS[kind]}",
                }
            return 200, OK_ANSWERS[f]
        if f == "dingtalk":
            if query.get("access_token") != self.token:
                return 200, {"errcode": 300001, "errmsg": "token is not exist"}
            if valid is False:
                return 200, {"errcode": 310000, "errmsg": "sign not match"}
            return 200, OK_ANSWERS[f]
        if not path.endswith("/" + self.token):
            return 200, {
                "code": 19001,
                "msg": "param invalid: incoming webhook access token invalid",
            }
        if valid is False:
            return 200, {
                "code": 19021,
                "msg": "sign match fail or timestamp is not within one hour from current time",
            }
        return 200, OK_ANSWERS[f]


@dataclass
class _SmtpHandler:
    receiver: SmtpReceiver

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.receiver.reply
        if reply.startswith("250"):
            raw = envelope.original_content or envelope.content or b""
            data = raw if isinstance(raw, bytes) else raw.encode()
            msg = email.message_from_bytes(data, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            with self.receiver.lock:
                self.receiver.messages.append(msg)
                self.receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return reply


class SmtpReceiver(_Running):
    """An SMTP server (aiosmtpd) on a free 127.0.0.1 port, recording parsed messages.

    ``auth=(user, password)`` offers AUTH PLAIN/LOGIN over the plain connection and refuses
    other credentials; ``answer("451 4.3.0 Try later")`` sets the reply to DATA.
    """

    def __init__(self, *, auth: tuple[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str | None, list[str]]] = []
        self.lock = threading.Lock()
        self.reply = "250 OK queued as mw1"
        self._auth = auth
        self._controller: Controller | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and self._auth == (
            data.login.decode(),
            data.password.decode(),
        )
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    def start(self) -> Self:
        extra: dict[str, Any] = {}
        if self._auth is not None:
            extra = {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = Controller(
            _SmtpHandler(self), hostname=self.host, port=self.port, **extra
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def answer(self, reply: str = "250 OK queued as mw1") -> None:
        self.reply = reply

    def wait_for(self, n: int, timeout: float = 5.0) -> list[EmailMessage]:
        assert wait_until(lambda: len(self.messages) >= n, timeout, every=0.01), (
            f"{len(self.messages)} of {n} mails after {timeout}s"
        )
        with self.lock:
            return list(self.messages)


@dataclass(frozen=True)
class MqttMessage:
    topic: str
    payload: bytes
    user_properties: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        return orjson.loads(self.payload)


class MqttReceiver(_Running):
    """A paho-mqtt 2 subscriber (QoS 1) on the test broker, recording what arrives on a filter."""

    def __init__(self, url: str, topic_filter: str) -> None:
        self.address = BrokerAddress.parse(url)
        self.topic_filter = topic_filter
        self.messages: list[MqttMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = make_client(self.address, f"mw-rcv-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_connect = self._on_connect

    def _on_connect(
        self, c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Properties | None
    ) -> None:
        c.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        props = getattr(m.properties, "UserProperty", None) or []
        with self._lock:
            self.messages.append(MqttMessage(m.topic, bytes(m.payload), dict(props)))

    def start(self) -> Self:
        self._client.connect(self.address.host, self.address.port)
        self._client.loop_start()
        assert self._subscribed.wait(10), f"no SUBACK for {self.topic_filter}"
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[MqttMessage]:
        assert wait_until(lambda: len(self.messages) >= n, timeout, every=0.01), (
            f"{len(self.messages)} of {n} MQTT messages on {self.topic_filter} after {timeout}s"
        )
        with self._lock:
            return list(self.messages)
