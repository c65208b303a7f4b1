"""Broker addresses and paho-mqtt clients, shared by ingest, simulators and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PROTOCOLS = ("5", "3.1.1")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    protocol: str = "5"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883).

        ``?protocol=3.1.1`` selects MQTT 3.1.1 for brokers without MQTT 5 (amqtt): sessions then
        persist through ``clean_session=False`` and have no expiry or receive maximum.
        """
        if not url:
            raise ValueError("no broker URL (set METERWATCH_MQTT_URL or pass --mqtt-url)")
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported broker URL scheme {parts.scheme!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        protocol = parse_qs(parts.query).get("protocol", ["5"])[-1]
        if protocol not in PROTOCOLS:
            raise ValueError(f"unsupported MQTT protocol {protocol!r}; use one of {PROTOCOLS}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            protocol=protocol,
        )

    def url(self) -> str:
        query = "" if self.protocol == "5" else f"?protocol={self.protocol}"
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}{query}"


def make_client(address: BrokerAddress, client_id: str = "") -> mqtt.Client:
    if address.protocol == "3.1.1":
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
            clean_session=False,
        )  # fmt: skip
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def session_args(
    address: BrokerAddress, *, session_expiry_s: int, receive_maximum: int
) -> dict[str, Any]:
    """Keyword arguments for ``connect``/``connect_async`` that keep a persistent session.

    MQTT 5: never a clean start, not even the first time (Mosquitto 2.0 does not save a session
    that began with one across a restart), an expiry, and our receive maximum. MQTT 3.1.1: the
    client was made with ``clean_session=False`` and there is nothing more to say.
    """
    if address.protocol == "3.1.1":
        return {}
    return {
        "clean_start": False,
        "properties": connect_properties(
            session_expiry_s=session_expiry_s, receive_maximum=receive_maximum
        ),
    }


def connect_properties(*, session_expiry_s: int, receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    props.ReceiveMaximum = receive_maximum
    return props
