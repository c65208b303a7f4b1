"""MQTT: the alert JSON on ``{prefix}alerts/{tenant}/{meter_id}`` (DESIGN.md's alert topic), for
SCADA and the utility's other programs.

One aiomqtt connection per channel, opened at the first send and kept; a send that finds it dead
(broker restart, session taken over) reconnects once and publishes again, so only a broker that
stays away fails the attempt. QoS 1 and ``send`` returns after the broker's PUBACK, so "sent" means
the broker has it. The payload is the alert object plus ``key`` and ``trigger``; on MQTT 5 the key
is also the user property ``idempotency-key``, readable without parsing the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import string
import uuid
from collections.abc import Mapping
from typing import Any

import aiomqtt
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, field_validator

from meterwatch.mqtt import BrokerAddress
from notify.channels.base import NO_CONTEXT, Channel, ChannelContext, DeliveryError, Spec
from notify.model import Notification

TOPIC_FIELDS = frozenset({"tenant", "meter_id", "dma", "type", "severity"})
# CONNACK refusals that repeat until the config changes (protocol, client id, credentials);
# MQTT 3.1.1 codes 1-5 and their MQTT 5 reason codes.
REFUSED = frozenset({1, 2, 4, 5, 132, 133, 134, 135, 140})
UNSAFE_IN_LEVEL = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def check_topic(template: str) -> str:
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if "+" in literal or "#" in literal:
            raise ValueError("a topic to publish on cannot hold the wildcards + or #")
        if field is not None and (field not in TOPIC_FIELDS or spec or conversion):
            raise ValueError(f"unknown placeholder {{{field}}}; use {sorted(TOPIC_FIELDS)}")
    return template


class MqttSpec(Spec):
    url: str = ""  # default: the process's broker (METERWATCH_MQTT_URL)
    # Placeholders are filled from the alert; the process's topic prefix goes in front.
    topic: str = "alerts/{tenant}/{meter_id}"
    client_id: str = ""
    timeout_s: float = Field(10.0, gt=0, le=300)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return check_topic(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v:
            BrokerAddress.parse(v)
        return v


def alert_topic(template: str, prefix: str, alert: Mapping[str, Any]) -> str:
    """The alert's topic; values cannot add levels or wildcards ("/", "+", "#" become "_")."""
    values = {k: str(alert.get(k) or "-").translate(UNSAFE_IN_LEVEL) for k in TOPIC_FIELDS}
    return prefix + template.format(**values)


class MqttChannel(Channel):
    kind = "mqtt"
    spec_model = MqttSpec
    _spec: MqttSpec

    def __init__(
        self, name: str, spec: Mapping[str, Any], context: ChannelContext = NO_CONTEXT
    ) -> None:
        super().__init__(name, spec, context)
        url = self._spec.url or context.mqtt_url
        if not url:
            raise ValueError(f"channel {name!r} (kind 'mqtt'): no url and no default broker")
        self._address = BrokerAddress.parse(url)
        self._prefix = context.topic_prefix
        self._client_id = self._spec.client_id or f"mw-notify-{name}-{uuid.uuid4().hex[:8]}"
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # connections opened so far: one per broker outage, not per message

    def target(self) -> str:
        return self._address.url()

    async def send(self, n: Notification) -> str:
        topic = alert_topic(self._spec.topic, self._prefix, n.alert)
        payload = orjson.dumps({**n.alert, "key": n.key, "trigger": str(n.trigger)})
        properties = None
        if self._address.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = [("idempotency-key", n.key)]
        for _ in range(2):
            connects = self.connects
            client = await self._connected()
            try:
                await client.publish(
                    topic, payload, qos=1, properties=properties, timeout=self._spec.timeout_s
                )
                return f"PUBACK {topic}"
            except aiomqtt.MqttError as e:
                await self._drop(client)
                if self.connects != connects:  # a fresh connection failed: the broker is away
                    raise DeliveryError(f"{self.target()}: publish: {e}", retryable=True) from e
        raise DeliveryError(f"{self.target()}: publish failed after reconnecting", retryable=True)

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is not None:
                return self._client
            a = self._address
            client = aiomqtt.Client(
                a.host,
                a.port,
                username=a.username,
                password=a.password,
                identifier=self._client_id,
                protocol=aiomqtt.ProtocolVersion.V5
                if a.protocol == "5"
                else aiomqtt.ProtocolVersion.V311,
                tls_context=ssl.create_default_context() if a.tls else None,
                timeout=self._spec.timeout_s,
            )
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as e:
                rc = getattr(e, "rc", None)
                code = rc.value if isinstance(rc, ReasonCode) else rc
                raise DeliveryError(
                    f"{self.target()}: connect: {e}", retryable=code not in REFUSED
                ) from e
            self._client = client
            self.connects += 1
            return client

    async def _drop(self, client: aiomqtt.Client) -> None:
        if self._client is client:
            self._client = None
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._drop(self._client)
