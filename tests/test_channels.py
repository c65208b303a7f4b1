"""Every channel kind against a real local receiver: format, signature, idempotency key, and how
failures are classified (retryable or not), which is what the outbox acts on."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterwatch.embedded import free_port
from meterwatch.mqtt import BrokerAddress
from notify.channels import KINDS, Channel, ChannelContext, DeliveryError, build_channel
from notify.channels._render import truncate_utf8
from notify.channels.mqtt import MqttChannel
from notify.channels.stream import NOTIFY_LIMIT, StreamChannel, live_payload
from notify.config import CHANNEL_KINDS
from notify.model import LIVE_CHANNEL, Audience, Notification, Trigger
from tests.receivers import HttpReceiver, MqttReceiver, SmtpReceiver

T = TypeVar("T")
LINKS = {
    "alert": "https://mw.example.cn/alerts/42",
    "expected": "https://mw.example.cn/a/42/expected?t=x",
    "not_expected": "https://mw.example.cn/a/42/not-expected?t=x",
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def note(
    *,
    key: str = "mw-42-opened-0-0-ops",
    lang: str = "zh",
    title: str = "【漏水】WH-000123 疑似持续漏水",
    text: str = "最小流量 38 L/h，持续 24 小时。\n预计每天损失 0.91 m³（约 3.6 元）。",
    severity: str = "warning",
    evidence: dict[str, Any] | None = None,
    message: dict[str, str] | None = None,
) -> Notification:
    alert = {
        "id": 42, "tenant": "acme", "meter_id": "WH-000123", "dma": "wuchang-03",
        "type": "leak", "severity": severity, "status": "open",
        "started_at": "2025-03-27T16:00:00Z", "detected_at": "2025-03-28T16:00:00Z",
        "resolved_at": None,
        "evidence": evidence if evidence is not None else {"min_flow_lph": 38.0, "window_h": 24},
        "estimated_loss_m3_per_day": 0.91, "estimated_cost_cny_per_day": 3.6,
        "message": message or {"zh": "疑似漏水", "en": "Suspected leak"},
    }  # fmt: skip
    return Notification(
        key=key, channel="ops", audience=Audience.STAFF, trigger=Trigger.OPENED, lang=lang,
        title=title, text=text, alert=alert, links=LINKS, created_at="2025-03-28T16:00:00Z",
    )  # fmt: skip


async def send(channel: Channel, *notes: Notification) -> list[str]:
    async with channel:
        return [await channel.send(n) for n in notes]


async def failure(channel: Channel, n: Notification) -> DeliveryError:
    async with channel:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(n)
    return caught.value


# -- building ------------------------------------------------------------------------------


def test_build_channel_picks_the_kind_and_refuses_bad_specs() -> None:
    ctx = ChannelContext(database_url="postgresql://u:pw@127.0.0.1/db", mqtt_url="mqtt://h")
    specs: dict[str, dict[str, Any]] = {
        "webhook": {"url": "https://erp.example.cn/hook"},
        "wecom": {"url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"},
        "dingtalk": {"url": "https://oapi.dingtalk.com/robot/send?access_token=t"},
        "feishu": {"url": "https://open.feishu.cn/open-apis/bot/v2/hook/t"},
        "email": {"host": "smtp.example.cn", "sender": "mw@example.cn", "to": ["a@example.cn"]},
        "mqtt": {},
        "stream": {},
    }
    assert set(KINDS) == set(specs)

    async def build_all() -> None:
        for kind, spec in specs.items():
            channel = build_channel(f"c-{kind}", {"kind": kind, **spec}, ctx)
            assert channel.kind == kind and channel.name == f"c-{kind}"
            await channel.aclose()

    run(build_all())
    bad: list[tuple[dict[str, Any], str]] = [
        ({"kind": "pager"}, "unknown kind 'pager'"),
        ({"url": "https://x.cn"}, "unknown kind None"),
        ({"kind": "webhook", "url": "https://x.cn", "timeout": 3}, "timeout: Extra inputs"),
        ({"kind": "webhook"}, "url: Field required"),
        ({"kind": "webhook", "url": "ftp://x.cn"}, "http:// or https://"),
        ({"kind": "email", "host": "h", "sender": "s", "to": []}, "to:"),
        ({"kind": "email", **specs["email"], "ssl": True, "starttls": True}, "choose one"),
        ({"kind": "mqtt", "topic": "alerts/{customer}"}, "unknown placeholder {customer}"),
        ({"kind": "mqtt", "topic": "alerts/+/{meter_id}"}, "wildcards"),
    ]
    for spec, problem in bad:
        with pytest.raises(ValueError, match="channel 'ops'") as caught:
            build_channel("ops", spec, ctx)
        assert problem in str(caught.value), str(caught.value)
    with pytest.raises(ValueError, match="no url and no default broker"):
        build_channel("ops", {"kind": "mqtt"})


def test_the_config_accepts_exactly_the_kinds_there_are() -> None:
    assert set(KINDS) == CHANNEL_KINDS


def test_secrets_stay_out_of_repr_and_config_errors() -> None:
    async def check() -> None:
        channels = [
            build_channel(
                "erp",
                {
                    "kind": "webhook",
                    "url": "https://erp.example.cn/hook?token=tok-in-url",
                    "secret": "hmac-secret",
                    "headers": {"Authorization": "Bearer bearer-secret"},
                },
            ),
            build_channel(
                "grp", {"kind": "wecom", "url": "https://qyapi.weixin.qq.com/send?key=robot-key"}
            ),
            build_channel(
                "ding",
                {"kind": "dingtalk", "url": "https://o.cn/send?access_token=tk", "secret": "SEC1"},
            ),
            build_channel(
                "mail",
                {
                    "kind": "email",
                    "host": "smtp.example.cn",
                    "sender": "s@x.cn",
                    "to": ["a@x.cn"],
                    "username": "u",
                    "password": "mail-password",
                },
            ),
            build_channel("live", {"kind": "stream", "database_url": "postgresql://u:db-pw@h/d"}),
        ]
        shown = " ".join(repr(c) for c in channels)
        for channel in channels:
            await channel.aclose()
        for secret in ("tok-in-url", "hmac-secret", "bearer-secret", "robot-key", "SEC1", "tk"):
            assert secret not in shown
        assert "mail-password" not in shown and "db-pw" not in shown
        assert "erp.example.cn" in shown and "smtp://smtp.example.cn:25" in shown

    run(check())
    with pytest.raises(ValueError) as caught:
        build_channel("erp", {"kind": "webhook", "url": "https://x.cn", "secret": 987654321})
    assert "secret" in str(caught.value) and "987654321" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- generic webhook -----------------------------------------------------------------------


def test_webhook_arrives_once_signed_with_the_idempotency_key() -> None:
    n = note()
    with HttpReceiver("webhook", secret="s3cret") as hook:
        spec = {"kind": "webhook", "url": hook.url, "secret": "s3cret", "headers": {"X-Org": "7"}}
        assert run(send(build_channel("erp", spec), n)) == ["200"]
        [req] = hook.wait_for(1)
        time.sleep(0.05)
        assert len(hook.requests) == 1
    assert req.signature_valid is True
    assert req.json == n.to_json()
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-meterwatch-event"] == "opened"
    assert req.headers["x-org"] == "7"
    assert abs(int(req.headers["x-meterwatch-timestamp"]) - time.time()) < 5
    assert hook.keys() == [n.key]


def test_webhook_with_a_wrong_secret_is_refused_and_not_retried() -> None:
    with HttpReceiver("webhook", secret="right") as hook:
        spec = {"kind": "webhook", "url": hook.url, "secret": "wrong"}
        error = run(failure(build_channel("erp", spec), note()))
        [req] = hook.wait_for(1)
    assert req.signature_valid is False
    assert (error.status, error.retryable) == (401, False)


def test_webhook_failures_are_classified() -> None:
    n = note()
    with HttpReceiver("webhook") as hook:
        spec = {"kind": "webhook", "url": hook.url, "timeout_s": 0.3}
        for status, retryable in ((503, True), (429, True), (408, True), (400, False)):
            hook.answer(status, {"error": "no"})
            error = run(failure(build_channel("erp", spec), n))
            assert (error.status, error.retryable) == (status, retryable)
            assert f"HTTP {status}" in error.detail and "127.0.0.1" in error.detail
        hook.answer(delay_s=1.0)
        error = run(failure(build_channel("erp", spec), n))
        assert error.retryable and "timed out" in error.detail
        hook.answer()
        port = hook.port
        hook.stop()
        error = run(failure(build_channel("erp", spec), n))
        assert error.retryable and error.status is None  # connection refused: the receiver is down
        hook.start()
        assert hook.port == port
        assert run(send(build_channel("erp", spec), n)) == ["200"]
        assert hook.keys() == [n.key] * 6


# -- WeCom -----------------------------------------------------------------------------------


def test_wecom_markdown_arrives_and_long_text_is_cut_to_the_byte_limit() -> None:
    short, long = note(), note(key="mw-43-opened-0-0-ops", text="漏" * 5000)  # 15,000 bytes
    with HttpReceiver("wecom") as robot:
        receipts = run(send(build_channel("grp", {"kind": "wecom", "url": robot.url}), short, long))
        first, second = robot.wait_for(2)
    assert receipts == ["200 errcode=0", "200 errcode=0"]
    assert first.json["msgtype"] == "markdown"
    content = first.json["markdown"]["content"]
    assert content.startswith(f"### {short.title}\n") and short.text in content
    assert f"[查看告警]({LINKS['alert']})" in content
    cut = second.json["markdown"]["content"]
    assert second.answer["errcode"] == 0  # the receiver enforces WeCom's limit
    assert 4000 < len(cut.encode()) <= 4096 and cut.encode().decode() == cut
    assert "…" in cut and cut.endswith(f"[不是预期用水]({LINKS['not_expected']})")
    assert robot.keys() == [short.key, long.key]


def test_wecom_mentions_phones_for_critical_alerts_in_a_text_message() -> None:
    spec: dict[str, Any] = {"kind": "wecom", "mentioned_mobiles": ["13800001111"]}
    with HttpReceiver("wecom") as robot:
        spec["url"] = robot.url
        run(send(build_channel("grp", spec), note(severity="critical"), note(severity="warning")))
        critical, warning = robot.wait_for(2)
    assert critical.json["msgtype"] == "text"
    assert critical.json["text"]["mentioned_mobile_list"] == ["13800001111"]
    assert critical.json["text"]["content"].startswith(note().title)
    assert warning.json["msgtype"] == "markdown"


def test_wecom_error_codes() -> None:
    with HttpReceiver("wecom") as robot:
        spec = {"kind": "wecom", "url": robot.url}
        robot.answer(200, {"errcode": 45009, "errmsg": "api freq out of limit"})
        limited = run(failure(build_channel("grp", spec), note()))
        robot.answer(502)
        bad_gateway = run(failure(build_channel("grp", spec), note()))
        robot.answer()
        wrong_key = spec | {"url": robot.url.replace(robot.token, "nope")}
        refused = run(failure(build_channel("grp", wrong_key), note()))
    assert limited.retryable and "errcode=45009" in limited.detail
    assert bad_gateway.retryable and bad_gateway.status == 502
    assert not refused.retryable and "errcode=93000" in refused.detail
    assert robot.token not in refused.detail


# -- DingTalk ----------------------------------------------------------------------------------


def test_dingtalk_markdown_with_a_valid_sign() -> None:
    n = note(severity="critical")
    with HttpReceiver("dingtalk", secret="SECabc+/=") as robot:
        spec = {
            "kind": "dingtalk", "url": robot.url, "secret": "SECabc+/=",
            "at_mobiles": ["13800001111"],
        }  # fmt: skip
        assert run(send(build_channel("ding", spec), n)) == ["200 errcode=0"]
        [req] = robot.wait_for(1)
    assert req.signature_valid is True
    assert abs(int(req.query["timestamp"]) - time.time() * 1000) < 5000
    body = req.json
    assert body["msgtype"] == "markdown" and body["markdown"]["title"] == n.title
    assert body["markdown"]["text"].startswith(f"#### {n.title}\n\n")
    assert "@13800001111" in body["markdown"]["text"]
    assert body["at"] == {"atMobiles": ["13800001111"], "isAtAll": False}
    assert robot.keys() == [n.key]


def test_dingtalk_wrong_secret_and_rate_limit() -> None:
    with HttpReceiver("dingtalk", secret="SECright") as robot:
        spec = {"kind": "dingtalk", "url": robot.url, "secret": "SECwrong"}
        refused = run(failure(build_channel("ding", spec), note()))
        assert robot.wait_for(1)[0].signature_valid is False
        robot.answer(200, {"errcode": 130101, "errmsg": "send too fast"})
        limited = run(failure(build_channel("ding", spec | {"secret": "SECright"}), note()))
    assert not refused.retryable and "errcode=310000" in refused.detail
    assert limited.retryable and "errcode=130101" in limited.detail


# -- Feishu ------------------------------------------------------------------------------------


def test_feishu_post_with_a_valid_sign_in_the_body() -> None:
    zh, en = note(), note(key="mw-42-opened-0-0-ops-en", lang="en", title="Leak", text="a\nb")
    with HttpReceiver("feishu", secret="fs-secret") as bot:
        spec = {"kind": "feishu", "url": bot.url, "secret": "fs-secret"}
        assert run(send(build_channel("fs", spec), zh, en)) == ["200 code=0"] * 2
        first, second = bot.wait_for(2)
    assert first.signature_valid is True and second.signature_valid is True
    assert isinstance(first.json["timestamp"], str)
    assert abs(int(first.json["timestamp"]) - time.time()) < 5
    assert first.json["msg_type"] == "post"
    post = first.json["content"]["post"]["zh_cn"]
    assert post["title"] == zh.title
    assert post["content"][0] == [{"tag": "text", "text": zh.text.split("\n")[0]}]
    assert [{"tag": "a", "text": "查看告警", "href": LINKS["alert"]}] in post["content"]
    english = second.json["content"]["post"]["en_us"]
    assert english["content"][:2] == [
        [{"tag": "text", "text": "a"}],
        [{"tag": "text", "text": "b"}],
    ]
    assert [{"tag": "a", "text": "View alert", "href": LINKS["alert"]}] in english["content"]


def test_feishu_wrong_secret_old_answer_and_rate_limit() -> None:
    with HttpReceiver("feishu", secret="right") as bot:
        spec = {"kind": "feishu", "url": bot.url, "secret": "wrong"}
        refused = run(failure(build_channel("fs", spec), note()))
        assert bot.wait_for(1)[0].signature_valid is False
        good = spec | {"secret": "right"}
        bot.answer(200, {"StatusCode": 0, "StatusMessage": "success"})
        assert run(send(build_channel("fs", good), note())) == ["200 StatusCode=0"]
        bot.answer(200, {"code": 9499, "msg": "too many request"})
        limited = run(failure(build_channel("fs", good), note()))
    assert not refused.retryable and "code=19021" in refused.detail
    assert limited.retryable


# -- e-mail ------------------------------------------------------------------------------------


def test_email_arrives_with_chinese_subject_key_and_both_parts() -> None:
    n = note()
    with SmtpReceiver(auth=("mw", "pw")) as smtp:
        spec = {
            "kind": "email", "host": smtp.host, "port": smtp.port, "username": "mw",
            "password": "pw", "sender": "meterwatch@example.cn",
            "to": ["ops@example.cn", "duty@example.cn"],
        }  # fmt: skip
        [receipt] = run(send(build_channel("mail", spec), n))
        [msg] = smtp.wait_for(1)
    assert receipt == "250 OK queued as mw1"
    assert smtp.envelopes == [("meterwatch@example.cn", ["ops@example.cn", "duty@example.cn"])]
    assert msg["Subject"] == n.title
    assert "=?utf-8?" in msg.as_string().split("Subject:", 1)[1].split("\n", 1)[0].lower()
    assert msg["Message-ID"] == f"<{n.key}@meterwatch>" and msg["X-Meterwatch-Key"] == n.key
    assert msg["Auto-Submitted"] == "auto-generated"
    assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    text = plain.get_content().replace("\r\n", "\n")
    assert text.startswith(n.text) and f"查看告警: {LINKS['alert']}" in text
    assert "最小流量 38 L/h" in html.get_content() and "查看告警</a>" in html.get_content()


def test_email_failures_are_classified() -> None:
    with SmtpReceiver(auth=("mw", "pw")) as smtp:
        spec: dict[str, Any] = {
            "kind": "email", "host": smtp.host, "port": smtp.port, "sender": "s@example.cn",
            "to": ["ops@example.cn"], "timeout_s": 3,
        }  # fmt: skip
        smtp.answer("451 4.3.0 Try again later")
        later = run(failure(build_channel("mail", spec), note()))
        smtp.answer("554 5.7.1 Rejected as spam")
        never = run(failure(build_channel("mail", spec), note()))
        smtp.answer()
        bad_login = spec | {"username": "mw", "password": "nope"}
        denied = run(failure(build_channel("mail", bad_login), note()))
        assert smtp.messages == []
    down = run(failure(build_channel("mail", spec | {"port": free_port()}), note()))
    assert (later.status, later.retryable) == (451, True)
    assert (never.status, never.retryable) == (554, False)
    assert (denied.status, denied.retryable) == (535, False) and "nope" not in denied.detail
    assert down.retryable and down.status is None


# -- MQTT --------------------------------------------------------------------------------------


def test_mqtt_publishes_the_alert_on_its_topic_with_the_key(
    mqtt_url: str, topic_prefix: str
) -> None:
    ctx = ChannelContext(mqtt_url=mqtt_url, topic_prefix=topic_prefix)
    a, b = note(), note(key="mw-42-severity-0-1-scada", severity="critical")
    with MqttReceiver(mqtt_url, f"{topic_prefix}alerts/#") as sub:
        channel = build_channel("scada", {"kind": "mqtt"}, ctx)
        assert isinstance(channel, MqttChannel)
        receipts = run(send(channel, a, b))
        first, second = sub.wait_for(2)
    assert receipts == [f"PUBACK {topic_prefix}alerts/acme/WH-000123"] * 2
    assert first.topic == f"{topic_prefix}alerts/acme/WH-000123"
    assert first.json == {**a.alert, "key": a.key, "trigger": "opened"}
    assert second.json["severity"] == "critical" and second.json["key"] == b.key
    if BrokerAddress.parse(mqtt_url).protocol == "5":
        assert first.user_properties == {"idempotency-key": a.key}
    assert channel.connects == 1  # one connection for both


def test_mqtt_reconnects_when_its_connection_is_taken_over(
    mqtt_url: str, topic_prefix: str
) -> None:
    ctx = ChannelContext(mqtt_url=mqtt_url, topic_prefix=topic_prefix)
    client_id = f"mw-notify-{topic_prefix.split('/')[1]}"
    spec = {"kind": "mqtt", "topic": "x/{type}/{tenant}", "client_id": client_id}
    plain = note()
    odd = Notification.from_json({**plain.to_json(), "alert": {**plain.alert, "tenant": "a/b+#"}})

    async def scenario(channel: Channel) -> list[str]:
        async with channel:
            out = [await channel.send(plain)]
            addr = BrokerAddress.parse(mqtt_url)
            thief = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
            thief.connect(addr.host, addr.port)  # the broker drops the channel's connection
            thief.loop_start()
            await asyncio.sleep(0.3)
            thief.disconnect()
            thief.loop_stop()
            out.append(await channel.send(odd))
            return out

    with MqttReceiver(mqtt_url, f"{topic_prefix}x/#") as sub:
        channel = build_channel("scada", spec, ctx)
        assert isinstance(channel, MqttChannel)
        receipts = run(scenario(channel))
        messages = sub.wait_for(2)
    assert receipts[1] == f"PUBACK {topic_prefix}x/leak/a_b__"
    assert [m.topic for m in messages] == [
        f"{topic_prefix}x/leak/acme",
        f"{topic_prefix}x/leak/a_b__",
    ]
    assert channel.connects == 2


def test_mqtt_broker_down_is_retryable() -> None:
    spec = {"kind": "mqtt", "url": f"mqtt://127.0.0.1:{free_port()}", "timeout_s": 2}
    error = run(failure(build_channel("scada", spec), note()))
    assert error.retryable and "connect" in error.detail


# -- live stream -------------------------------------------------------------------------------


def listen(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(f"LISTEN {LIVE_CHANNEL}")
    return conn


def test_stream_notifies_listeners_and_reconnects(db_url: str) -> None:
    n = note()
    ctx = ChannelContext(database_url=db_url)

    async def scenario(channel: Channel) -> list[str]:
        async with channel:
            out = [await channel.send(n)]
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'meterwatch-notify-stream' "
                    "AND datname = current_database()"
                )
            out.append(await channel.send(n))
            return out

    with listen(db_url) as conn:
        channel = build_channel("live", {"kind": "stream"}, ctx)
        assert isinstance(channel, StreamChannel)
        receipts = run(scenario(channel))
        got = list(conn.notifies(timeout=5, stop_after=2))
    assert all(r.startswith(f"NOTIFY {LIVE_CHANNEL} ") for r in receipts)
    assert [g.channel for g in got] == [LIVE_CHANNEL] * 2
    payload = orjson.loads(got[0].payload)
    assert payload == {
        "key": n.key, "trigger": "opened", "audience": "staff", "title": n.title,
        "alert": dict(n.alert),
    }  # fmt: skip
    assert channel.connects == 2


def test_stream_trims_a_big_alert_below_the_notify_limit(db_url: str) -> None:
    big = note(
        evidence={"hourly_lph": [38.123456] * 2000},
        message={"zh": "漏" * 3000, "en": "leak " * 2000},
        title="标题" * 500,
    )
    assert len(orjson.dumps(big.to_json())) > 3 * NOTIFY_LIMIT
    with listen(db_url) as conn:
        channel = build_channel("live", {"kind": "stream"}, ChannelContext(database_url=db_url))
        run(send(channel, big))
        [got] = list(conn.notifies(timeout=5, stop_after=1))
    assert len(got.payload.encode()) < NOTIFY_LIMIT
    payload = orjson.loads(got.payload)
    assert payload["trimmed"] is True and payload["key"] == big.key
    assert payload["alert"]["id"] == 42 and payload["alert"]["evidence"] == {}
    assert payload["alert"]["message"]["zh"].endswith("…")
    huge_fields = note(message={"zh": "x"}, title="t")
    odd = Notification.from_json(
        {**huge_fields.to_json(), "alert": {**huge_fields.alert, "tenant": "租户" * 5000}}
    )
    assert len(live_payload(odd)) < NOTIFY_LIMIT
    assert orjson.loads(live_payload(odd))["alert"]["meter_id"] == "WH-000123"


def test_stream_database_down_is_retryable() -> None:
    spec = {"kind": "stream", "database_url": f"postgresql://u@127.0.0.1:{free_port()}/x"}
    error = run(failure(build_channel("live", spec), note()))
    assert error.retryable and "connect" in error.detail


def test_truncate_utf8_never_splits_a_character() -> None:
    for limit in range(0, 40):
        cut = truncate_utf8("漏水告警abc", limit)
        assert len(cut.encode()) <= limit
        cut.encode().decode()
